"""`make student`: a handout that stands alone (tools/student_copies.py). Unzipped anywhere it holds the notebooks
without solutions, every file they read (copies, no links), a wheel of nanlab with no notebook in it and a
requirements file; installed offline into a fresh virtual environment, its notebooks fail only in the exercises.

Why this proves "installs from the handout without the repository": the environment is a new ``python -m venv``
into which only the handout's wheel is installed (``pip install --no-index --no-deps``: offline, nothing from the
repository); torch, TensorFlow, Jupyter … are reused from the project's environment by a ``.pth`` line, which puts
them *after* the new environment's own site-packages and, unlike PYTHONPATH, does not run the project's
editable-install hook, so ``import nanlab`` cannot reach the repository. Each kernel reports its interpreter and
the nanlab it imported, and the test asserts both are the new environment's. The notebooks run from the unzipped
folder, their working directory the notebook's own, far from the repository.
"""
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import nbformat
import pytest

from tools import assignment, student_copies

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
# Executed in the slow test unless NANLAB_HANDOUT_ALL=1: the start, and per framework the notebooks that read a
# repository file (01, 02, 09) and the one that runs a helper script (pytorch/90); ~3 min on 2 cores, all: ~8 min.
READING = ("01-high-learning-rate.ipynb", "02-log-of-zero.ipynb", "09-bad-initialisation.ipynb")
EXECUTED_SUBSET = ["00-start-here.ipynb", *(f"{framework}/{name}" for framework in ("pytorch", "tensorflow")
                                            for name in READING), "pytorch/90-hunt-your-own-nan.ipynb"]
PROBE = ("import json as _json, sys as _sys, nanlab as _nanlab\n"
         "print('PROBE' + _json.dumps({'executable': _sys.executable, 'nanlab': _nanlab.__file__, 'path': _sys.path}))")
RUNNER = """
import json, pathlib, sys
import nbformat
from nbclient import NotebookClient

results = {}
for path in sys.argv[2:]:
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(sys.argv[1]))
    NotebookClient(notebook, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(pathlib.Path(path).parent)}}).execute()
    probe = next(output["text"] for output in notebook.cells[0].outputs if output.get("name") == "stdout")
    errors = {}
    for index, cell in enumerate(notebook.cells[1:]):
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                errors[index] = {"ename": output["ename"], "nbgrader": cell.metadata.get("nbgrader", {}),
                                 "tags": cell.metadata.get("tags", [])}
    results[path] = {"probe": json.loads(probe.split("PROBE", 1)[1]), "errors": errors}
print(json.dumps(results))
"""


def test_requirements_pin_what_the_notebooks_need_and_nothing_of_the_dev_tools():
    lines = [line for line in student_copies.requirements().splitlines() if line and not line.startswith("#")]
    names = {line.split("=")[0].split(">")[0].split("<")[0].split("~")[0] for line in lines}
    assert "torch==2.13.0" in lines, "torch pinned as the project pins it"
    assert {"numpy", "matplotlib", "tqdm", "torch", "tensorflow-cpu", "keras", "jupyterlab", "ipykernel"} == names


def test_a_zip_holds_copies_only(tmp_path):
    folder = tmp_path / "handout"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "notebooks" / "a.ipynb").write_text("{}")
    archive = student_copies.write_zip(folder, tmp_path / "handout.zip")
    assert zipfile.ZipFile(archive).namelist() == ["nanlab-student/notebooks/a.ipynb"]
    (folder / "benchmarks").symlink_to(ROOT / "benchmarks")
    with pytest.raises(RuntimeError, match="link"):
        student_copies.write_zip(folder, tmp_path / "again.zip")


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    """`make student` into a temporary folder, unzipped elsewhere: the unzipped folder."""
    work = tmp_path_factory.mktemp("handout")
    student_copies.build_handout(NOTEBOOKS, work / "student", work / "nanlab-student.zip", work / "course")
    with zipfile.ZipFile(work / "nanlab-student.zip") as archive:
        links = [info.filename for info in archive.infolist() if (info.external_attr >> 16) & 0o170000 == 0o120000]
        assert not links, f"links in the zip: {links}"
        archive.extractall(work / "unzipped")
    return work / "unzipped" / student_copies.ZIP_FOLDER


@pytest.mark.slow
def test_the_handout_holds_every_notebook_without_solutions_and_every_file_they_read(handout):
    copies = sorted(handout.rglob("*.ipynb"))
    assert {path.relative_to(handout).as_posix() for path in copies} == \
        {path.relative_to(ROOT).as_posix() for path in NOTEBOOKS}, "the repository's layout"
    for copy in copies:
        text = copy.read_text()
        assert not student_copies.SOLUTION_TEXT.search(text), copy
        notebook = nbformat.reads(text, as_version=4)
        assert all(not cell.outputs for cell in notebook.cells if cell.cell_type == "code"), copy
        original = ROOT / copy.relative_to(handout)
        for relative, _ in assignment.files_read(original):
            assert (copy.parent / relative).resolve().is_file(), f"{copy.name} reads {relative}"
            assert (copy.parent / relative).resolve().is_relative_to(handout.resolve())
        for helper in assignment.helper_files(original):
            assert (copy.parent / helper.name).is_file(), f"{copy.name} runs {helper.name}"
    assert not [path for path in handout.rglob("*") if path.is_symlink()]
    wheel, = handout.glob("wheels/nanlab-*.whl")
    assert student_copies.wheel_problems(wheel) == []
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if "notebooks" in name or name.endswith(".ipynb")]
    assert "torch==2.13.0" in (handout / "requirements.txt").read_text()
    assert wheel.name in (handout / "README.md").read_text()


def _fresh_environment(handout, folder):
    """A new venv with the handout's wheel installed offline, the project's third-party packages after it."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheel, = handout.glob("wheels/nanlab-*.whl")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--disable-pip-version-check", str(wheel)], check=True)
    site_packages = pathlib.Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip())
    # after the pip install: pip must not see the project's own (editable) nanlab as already installed
    (site_packages / "zz_project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python, site_packages


def _executed():
    if os.environ.get("NANLAB_HANDOUT_ALL"):
        return [path.relative_to(ROOT / "notebooks").as_posix() for path in NOTEBOOKS]
    return EXECUTED_SUBSET


@pytest.mark.slow
def test_a_real_student_copy_fails_only_in_its_exercises(handout, tmp_path):
    python, site_packages = _fresh_environment(handout, tmp_path)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PYTHONPATH", "JUPYTER_PATH", "VIRTUAL_ENV")}
    paths = [str(handout / "notebooks" / name) for name in _executed()]
    runner = tmp_path / "run_notebooks.py"
    runner.write_text(RUNNER)
    result = subprocess.run([str(python), str(runner), PROBE, *paths], cwd=tmp_path, env=environment,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    stubs_ran = 0
    for path, outcome in results.items():
        probe = outcome["probe"]
        assert pathlib.Path(probe["executable"]).parent == python.parent, (path, probe["executable"])
        assert pathlib.Path(probe["nanlab"]).is_relative_to(site_packages), (path, probe["nanlab"])
        repository = [entry for entry in probe["path"] if entry and pathlib.Path(entry).resolve().is_relative_to(ROOT)
                      and not pathlib.Path(entry).resolve().is_relative_to(ROOT / ".venv")]
        assert not repository, f"the repository is on the kernel's path: {repository}"
        unexpected = {index: error["ename"] for index, error in outcome["errors"].items()
                      if not (error["nbgrader"].get("solution") or error["nbgrader"].get("grade"))
                      and "raises-exception" not in error["tags"]}
        assert not unexpected, f"{path}: cells outside the exercises failed: {unexpected}"
        stubs_ran += sum(error["ename"] == "NotImplementedError" for error in outcome["errors"].values())
    assert stubs_ran, "the students' stubs ran"
