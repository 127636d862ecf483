"""`make student`: solutions removed, checks kept, outputs cleared; a student copy fails only where the student
has work to do (the exercise cells and the checks right after them)."""
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from tools.student_copies import CODE_STUB, EXERCISE_TAG, has_solution, strip_solutions, student_copy, write_copies

ROOT = pathlib.Path(__file__).resolve().parents[1]

NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))


def _has_exercises(path):
    return any(has_solution(cell.source) for cell in nbformat.read(path, as_version=4).cells)


def allowed_failures(notebook) -> set[int]:
    """Indices of the exercise cells and of the code cells after each, up to the next markdown cell (its checks)."""
    allowed, in_exercise = set(), False
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            in_exercise = False
        elif EXERCISE_TAG in cell.metadata.get("tags", []) or in_exercise:
            allowed.add(index)
            in_exercise = True
    return allowed


def run_allowing_errors(notebook, folder: pathlib.Path) -> dict[int, str]:
    """Execute every cell; the error name of each cell that raised, by index (cells tagged raises-exception in
    the original are meant to raise and are left out)."""
    NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(folder)}}).execute()
    return {index: output["ename"] for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
            and "raises-exception" not in cell.metadata.get("tags", [])
            for output in cell.get("outputs", []) if output["output_type"] == "error"}


def test_solutions_become_a_stub_at_their_indentation():
    source = "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n\nprint('kept')"
    assert strip_solutions(source, CODE_STUB) == f"def double(x):\n    {CODE_STUB}\n\nprint('kept')"
    with pytest.raises(ValueError, match="unbalanced"):
        strip_solutions("### BEGIN SOLUTION\nx = 1", CODE_STUB)
    prose = "Solutions go between `### BEGIN SOLUTION` and `### END SOLUTION`."
    assert not has_solution(prose) and strip_solutions(prose, CODE_STUB) == prose


def _fixture_notebook():
    cells = [nbformat.v4.new_markdown_cell("# A lesson"),
             nbformat.v4.new_code_cell("steps = 3"),
             nbformat.v4.new_markdown_cell("## Exercise: double it"),
             nbformat.v4.new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n"
                                       "    ### END SOLUTION"),
             nbformat.v4.new_code_cell("assert double(steps) == 6\nprint('checked')"),
             nbformat.v4.new_markdown_cell("## Exercise: halve it"),
             nbformat.v4.new_code_cell("### BEGIN SOLUTION\nhalf = steps / 2\n### END SOLUTION"),
             nbformat.v4.new_code_cell("assert half == 1.5"),
             nbformat.v4.new_markdown_cell("## Summary\n### BEGIN SOLUTION\nDoubling doubles.\n### END SOLUTION"),
             nbformat.v4.new_code_cell("print(steps + 1)")]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def test_a_student_copy_fails_in_the_exercise_and_its_check_only(tmp_path):
    original = _fixture_notebook()
    assert run_allowing_errors(nbformat.from_dict(original), tmp_path) == {}, "the solution passes its check"
    copy = student_copy(original)
    assert "return 2 * x" not in copy.cells[3].source and CODE_STUB in copy.cells[3].source
    assert copy.cells[4].source == original.cells[4].source, "the check is kept"
    assert "Doubling" not in copy.cells[8].source
    assert all(not cell.get("outputs") for cell in copy.cells if cell.cell_type == "code")
    errors = run_allowing_errors(copy, tmp_path)
    assert errors == {4: "NotImplementedError", 6: "NotImplementedError", 7: "NameError"}
    assert set(errors) <= allowed_failures(copy)


def test_make_student_writes_every_notebook_without_solutions_or_outputs(tmp_path):
    written = write_copies(NOTEBOOKS, tmp_path)
    assert len(written) == len(NOTEBOOKS)
    for target in written:
        notebook = nbformat.read(target, as_version=4)
        assert not any(has_solution(cell.source) for cell in notebook.cells), target
        assert all(not cell.outputs and cell.execution_count is None
                   for cell in notebook.cells if cell.cell_type == "code"), target


def _first_with_exercises(folder):
    found = [path for path in NOTEBOOKS if path.parent.name == folder and _has_exercises(path)]
    return found[:1] or [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no notebooks/{folder} notebook has ### BEGIN SOLUTION markers yet"))]


@pytest.mark.parametrize("path", _first_with_exercises("pytorch") + _first_with_exercises("tensorflow"),
                         ids=lambda path: path.name if path else "none")
def test_a_real_student_copy_fails_only_in_its_exercises(tmp_path, path):
    copy_path, = write_copies([path], tmp_path)
    copy = nbformat.read(copy_path, as_version=4)
    errors = run_allowing_errors(copy, copy_path.parent)  # where a student runs it
    unexpected = {index: name for index, name in errors.items() if index not in allowed_failures(copy)}
    assert not unexpected, f"cells outside the exercises failed without their solutions: {unexpected}"
    assert "NotImplementedError" in errors.values(), "the student's stub ran"
