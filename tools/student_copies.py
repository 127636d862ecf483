"""Write student copies of notebooks: solutions removed, checks kept, outputs cleared.

Usage: python tools/student_copies.py --out build/student NOTEBOOK [...]

The nbgrader convention: in a code cell, the lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (markers
included) become ``raise NotImplementedError("your answer here")`` at the markers' indentation; in a markdown
cell they become *Your answer here.* Every other cell is kept as written, so the check cell after an exercise
still tests the student's answer. Cells that held a solution are tagged ``exercise``; outputs and execution
counts are cleared. Copies keep the notebooks' layout under ``--out`` (``<out>/pytorch/01-….ipynb``).

Convention for authors: an exercise is a code cell with the solution between the markers; the cells that check
the answer follow it directly, before the next markdown cell (tests/test_student.py expects a student copy to fail
in those cells only).
"""
from __future__ import annotations

import argparse
import pathlib
import re

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = 'raise NotImplementedError("your answer here")'
MARKDOWN_STUB = "*Your answer here.*"
EXERCISE_TAG = "exercise"
SOLUTION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n.*?^[ \t]*{re.escape(END)}[^\n]*(\n|$)",
                      re.MULTILINE | re.DOTALL)


def strip_solutions(source: str, stub: str) -> str:
    """``source`` with each solution region replaced by ``stub`` at the region's indentation."""
    if source.count(BEGIN) != source.count(END):
        raise ValueError(f"unbalanced solution markers in:\n{source}")
    return SOLUTION.sub(lambda match: f"{match.group(1)}{stub}{match.group(2)}", source)


def student_copy(notebook):
    """A copy of ``notebook`` with solutions stubbed, exercise cells tagged, outputs cleared."""
    copy = nbformat.from_dict(notebook)
    for cell in copy.cells:
        if BEGIN in cell.source:
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
    for path in notebooks:
        target = out / path.parent.name / path.name if path.parent.name != "notebooks" else out / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(student_copy(nbformat.read(path, as_version=4)), target)
        written.append(target)
    return written


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
