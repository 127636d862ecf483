"""environment.yml and the pyproject extras name the same packages with the same pins."""
import pathlib
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {*project["dependencies"], *extras["torch"], *extras["tensorflow"], *extras["integrations"],
              *extras["dev"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert environment["channels"] == ["conda-forge"]
    conda = [item for item in environment["dependencies"] if isinstance(item, str)]
    pip = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert "python=3.11" in conda and "pip" in conda
    assert "-e ." in pip
    assert {requirement.replace(" ", "") for requirement in pip if requirement != "-e ."} == \
        {requirement.replace(" ", "") for requirement in wanted}
    assert "torch==2.13.0" in wanted, "torch stays pinned on the install path CI uses"
