"""Write student copies of notebooks: solutions removed, checks kept, outputs cleared.

Usage: python -m tools.student_copies --out build/student NOTEBOOK [...]

The nbgrader convention: in a code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (markers
included) become ``raise NotImplementedError("your answer here")`` at the markers' indentation; in a markdown
cell they become *Your answer here.* Every other cell is kept as written, so the check cell after an exercise
still tests the student's answer. Cells that held a solution are tagged ``exercise``; outputs and execution
counts are cleared. Copies keep the repository's layout under ``--out`` (``<out>/notebooks/pytorch/01-….ipynb``)
and ``--out`` links to the repository's other top-level folders (``benchmarks``, ``docs`` …), so that a notebook's
relative paths (``../../benchmarks/RESULTS.md``) still resolve when a student runs the copy from its folder.

Convention for authors: an exercise is a code cell with the solution between the markers; the cells that check
the answer follow it directly, before the next markdown cell (tests/test_student.py expects a student copy to fail
in those cells only).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = 'raise NotImplementedError("your answer here")'
MARKDOWN_STUB = "*Your answer here.*"
EXERCISE_TAG = "exercise"
BEGIN_LINE = re.compile(rf"^[ \t]*{re.escape(BEGIN)}", re.MULTILINE)
END_LINE = re.compile(rf"^[ \t]*{re.escape(END)}", re.MULTILINE)
SOLUTION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(\n|$)",
                      re.MULTILINE | re.DOTALL)


def strip_solutions(source: str, stub: str) -> str:
    """``source`` with each solution region replaced by ``stub`` at the region's indentation."""
    if len(BEGIN_LINE.findall(source)) != len(END_LINE.findall(source)):
        raise ValueError(f"unbalanced solution markers in:\n{source}")
    return SOLUTION.sub(lambda match: f"{match.group(1)}{stub}{match.group(2)}", source)


def has_solution(source: str) -> bool:
    """True when a line of ``source`` opens a solution (a marker quoted inside prose does not count)."""
    return bool(BEGIN_LINE.search(source))


def student_copy(notebook):
    """A copy of ``notebook`` with solutions stubbed, exercise cells tagged, outputs cleared."""
    copy = nbformat.from_dict(notebook)
    for cell in copy.cells:
        if has_solution(cell.source):
            cell.source = strip_solutions(cell.source, CODE_STUB if cell.cell_type == "code" else MARKDOWN_STUB)
            tags = cell.metadata.setdefault("tags", [])
            if EXERCISE_TAG not in tags:
                tags.append(EXERCISE_TAG)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    return copy


def write_copies(notebooks: list[pathlib.Path], out: pathlib.Path) -> list[pathlib.Path]:
    written = []
    _link_repository(out)
    for path in notebooks:
        target = out / path.resolve().relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student_copy(nbformat.read(path, as_version=4)), target)
        for script in path.parent.glob("*.py"):  # helper scripts a notebook runs (e.g. the DDP child)
            shutil.copy2(script, target.parent / script.name)
        written.append(target)
    return written


def _link_repository(out: pathlib.Path) -> None:
    """Link ``out/<name>`` to each top-level folder of the repository other than notebooks/ and build/."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        link = out / entry.name
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in ("notebooks", "build") \
                and not link.exists():
            link.symlink_to(os.path.relpath(entry, out.resolve()), target_is_directory=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("build/student"))
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    for target in write_copies(args.notebooks, args.out):
        exercises = sum(EXERCISE_TAG in cell.metadata.get("tags", [])
                        for cell in nbformat.read(target, as_version=4).cells)
        print(f"{target}: {exercises} exercise cell{'s' if exercises != 1 else ''}")


if __name__ == "__main__":
    main()
