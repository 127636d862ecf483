"""The student handout (`make student`): a folder and a zip that stand alone, with no solution in them.

Usage: python -m tools.student_copies [--out build/student] [--zip build/nanlab-student.zip] [NOTEBOOK ...]
       (default: every notebook under notebooks/)

What it holds (``<out>/``, zipped as ``nanlab-student/``):

- ``notebooks/`` in the repository's layout (``notebooks/00-start-here.ipynb``, ``notebooks/pytorch/…``): nbgrader's
  release of each notebook (``tools/assignment.py``, the same release `make assignment` builds and grades against):
  solutions replaced by ``raise NotImplementedError()``, hidden tests and the explanations of answers removed,
  outputs cleared; the helper scripts a notebook runs (``pytorch/ddp_hunt.py``) beside it.
- every repository file a notebook reads by a relative path, copied (never linked) to where that path lands
  inside the handout: ``../../benchmarks/RESULTS.md`` from ``notebooks/pytorch/`` is ``benchmarks/RESULTS.md``.
- ``wheels/nanlab-<version>-py3-none-any.whl``: the package, built from a clean copy of ``nanlab/`` (``pip wheel
  --no-deps``); it holds the package's modules only, no notebook and no solution (``wheel_problems`` checks).
- ``requirements.txt``: the third-party packages the notebooks need, with the project's pins (torch==2.13.0 as in
  pyproject.toml), JupyterLab and ipykernel.
- ``README.md``: how a student installs it (online, or offline from a wheelhouse) and starts.

tests/test_student.py unzips the handout, installs the wheel offline into a fresh virtual environment and runs
the notebooks there; they fail only in the exercise cells.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile

from tools import assignment

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "student"
ZIP = ROOT / "build" / "nanlab-student.zip"
ZIP_FOLDER = "nanlab-student"
# from the dev extra, what a student needs to open the notebooks
NOTEBOOK_PACKAGES = ("jupyterlab", "ipykernel")
SOLUTION_TEXT = re.compile(r"BEGIN SOLUTION|END SOLUTION|BEGIN HIDDEN TESTS|END HIDDEN TESTS")

README = """\
# nanlab: why the loss turns NaN, and how to fix it

Notebooks that reproduce, diagnose and fix NaN losses, in PyTorch and in TensorFlow/Keras. Start with
`notebooks/00-start-here.ipynb`; your teacher tells you which framework and which notebooks.

## Install (once)
Python {python} or newer:

```bash
python -m venv .venv
source .venv/bin/activate            # Windows: .venv\\Scripts\\activate
pip install -r requirements.txt      # on a machine without an NVIDIA GPU, add
                                     #   --extra-index-url https://download.pytorch.org/whl/cpu
pip install --no-deps wheels/{wheel}
```

Without internet in the room your teacher hands out a folder of wheels (a wheelhouse); then
`pip install --no-index --find-links WHEELHOUSE -r requirements.txt` and the same last line.

## Start

```bash
jupyter lab notebooks/00-start-here.ipynb
```

## Exercises
Each notebook ends with exercises. Replace `raise NotImplementedError()` with your answer and run the cell and
the check after it. Some checks run only when your notebook is graded, and the explanation of an answer comes
with your feedback, so predict first, then run. Hand in the notebooks your teacher asks for (the `.ipynb` files,
saved).
"""


def requirements() -> str:
    """requirements.txt: the package's dependencies, the torch and tensorflow extras and the notebook packages of
    the dev extra, with pyproject.toml's pins."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    notebook = [requirement for requirement in extras["dev"]
                if re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0] in NOTEBOOK_PACKAGES]
    lines = ["# The packages the notebooks need, pinned as in the project's pyproject.toml.",
             "# pip install -r requirements.txt, then pip install --no-deps wheels/nanlab-*.whl (see README.md).",
             "# torch is pinned on purpose; on a machine without an NVIDIA GPU add",
             "#   --extra-index-url https://download.pytorch.org/whl/cpu  (the CPU build, far smaller)",
             *project["dependencies"], *extras["torch"], *extras["tensorflow"], *notebook]
    return "\n".join(lines) + "\n"


def build_wheel(out: pathlib.Path) -> pathlib.Path:
    """``pip wheel --no-deps`` of the package from a clean copy of the files the build reads (no stale
    ``build/lib``, nothing of the repository's other folders); the wheel's path."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as temporary:
        source = pathlib.Path(temporary) / "nanlab"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, source / name)
        shutil.copytree(ROOT / "nanlab", source / "nanlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--wheel-dir", str(out), str(source)], check=True)
    wheels = sorted(out.glob("nanlab-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one nanlab wheel in {out}, found {[wheel.name for wheel in wheels]}")
    return wheels[0]


def wheel_problems(wheel: pathlib.Path) -> list[str]:
    """Files of ``wheel`` that do not belong in a handout: notebooks, anything outside the package and its
    metadata, any file with a solution or hidden-test marker."""
    found = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            top = name.split("/", 1)[0]
            if name.endswith(".ipynb") or not (top == "nanlab" or top.endswith(".dist-info")):
                found.append(f"{name}: not part of the package")
            elif SOLUTION_TEXT.search(archive.read(name).decode("utf-8", errors="replace")):
                found.append(f"{name}: holds a solution or hidden-test marker")
    return found


def build_handout(notebooks: list[pathlib.Path], out: pathlib.Path = OUT, zip_path: pathlib.Path | None = ZIP,
                  course: pathlib.Path = assignment.COURSE) -> pathlib.Path:
    """Write the handout into ``out`` (emptied first) and, unless ``zip_path`` is None, zip it; ``out``."""
    released = assignment.release(notebooks, course, answer_key=None)
    if out.exists() or out.is_symlink():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, paths in released.items():
        folder = out / assignment.handout_folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        for released_file in sorted((course / "release" / name).iterdir()):
            if released_file.is_file() and (released_file.suffix != ".ipynb" or released_file in paths):
                shutil.copy2(released_file, folder / released_file.name)
    for notebook in notebooks:
        assignment.place_files_read(notebook, out / assignment.handout_folder(assignment.assignment_of(notebook)), out)
    wheel = build_wheel(out / "wheels")
    problems = wheel_problems(wheel)
    if problems:
        raise RuntimeError(f"{wheel.name} is no handout: {problems}")
    (out / "requirements.txt").write_text(requirements())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = project["requires-python"].lstrip(">=~ ")
    (out / "README.md").write_text(README.format(python=python, wheel=wheel.name))
    if zip_path is not None:
        write_zip(out, zip_path)
    return out


def write_zip(folder: pathlib.Path, zip_path: pathlib.Path) -> pathlib.Path:
    """``folder`` as ``zip_path`` under the top folder ``nanlab-student/``: plain files only (a link would dangle
    once unzipped elsewhere; a link in ``folder`` is an error)."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                raise RuntimeError(f"{path} is a link: a handout holds copies")
            if path.is_file():
                archive.write(path, f"{ZIP_FOLDER}/{path.relative_to(folder).as_posix()}")
    return zip_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--zip", type=pathlib.Path, default=ZIP)
    parser.add_argument("--course", type=pathlib.Path, default=assignment.COURSE)
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path)
    args = parser.parse_args()
    notebooks = [path.resolve() for path in args.notebooks] or sorted(assignment.NOTEBOOKS_DIR.rglob("*.ipynb"))
    out = build_handout(notebooks, args.out.resolve(), args.zip.resolve(), args.course.resolve())
    count = sum(1 for _ in out.rglob("*.ipynb"))
    print(f"{args.out}: {count} notebooks, {next(out.glob('wheels/*.whl')).name}, requirements.txt, README.md; "
          f"{args.zip}")


if __name__ == "__main__":
    main()
