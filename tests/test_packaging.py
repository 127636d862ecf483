"""environment.yml and the pyproject extras name the same packages and pins."""
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {requirement.replace(" ", "") for group in ("torch", "tensorflow", "dev") for requirement in extras[group]}
    wanted |= {requirement.replace(" ", "") for requirement in project["dependencies"]}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_start = lines.index(next(line for line in lines if line.strip() == "- pip:"))
    conda = {line.strip()[2:].replace(" ", "") for line in lines[:pip_start] if line.strip().startswith("- ")}
    pip = {line.strip()[2:].replace(" ", "") for line in lines[pip_start + 1:] if line.strip().startswith("- ")}
    assert "python=3.11" in conda and "conda-forge" in (ROOT / "environment.yml").read_text()
    listed = {requirement for requirement in conda | pip if not requirement.startswith(("python=", "pip", "-e"))}
    assert {_name(r) for r in listed} == {_name(r) for r in wanted}
    assert listed == wanted, "the same pins in both files"
    assert "torch==2.13.0" in wanted
