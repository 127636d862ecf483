"""Notebook conventions, papermill parameters, and one code path: notebook and CLI agree."""
import json
import pathlib
import re
import subprocess
import sys

import nbformat
import papermill
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
FRAMEWORK_IMPORT = {"torch": r"^\s*(import torch|from torch)",
                    "tensorflow": r"^\s*(import tensorflow|from tensorflow|import keras|from keras)"}


def _code(notebook) -> str:
    return "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: str(path.relative_to(ROOT)))
def test_notebook_conventions(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", "kernelspec: JupyterLab must not ask"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    tagged = [cell for cell in code_cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    frameworks = [name for name, pattern in FRAMEWORK_IMPORT.items() if re.search(pattern, _code(notebook), re.M)]
    assert len(frameworks) <= 1, f"imports {frameworks}: one framework per notebook"
    outputs = [output for cell in code_cells for output in cell.get("outputs", [])]
    assert outputs, "committed executed"
    assert not [o for o in outputs if o.get("name") == "stderr"], "stderr must stay empty"
    counts = [cell.execution_count for cell in code_cells]
    assert counts == list(range(1, len(counts) + 1)), "executed top to bottom, once"
    text = json.dumps(outputs)
    assert "/work/" not in text and "/home/" not in text and "<Figure size" not in text
    assert not [cell for cell in notebook.cells if "execution" in cell.metadata], "no execution timestamps"


def _first_nonfinite_step_printed(notebook) -> int:
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            found = re.search(r"first non-finite step: (\d+)", output.get("text", ""))
            if found:
                return int(found.group(1))
    raise AssertionError("the notebook did not print its first non-finite step")


@pytest.mark.parametrize("framework, folder", [("torch", "pytorch"), ("tensorflow", "tensorflow")])
def test_notebook_with_other_parameters_matches_the_cli(tmp_path, framework, folder):
    source = ROOT / "notebooks" / folder / "01-high-learning-rate.ipynb"
    executed = tmp_path / source.name
    papermill.execute_notebook(str(source), str(executed), cwd=str(source.parent), kernel_name="python3",
                               progress_bar=False, parameters={"SEED": 4, "STEPS": 40, "SWEEP_LRS": [0.1, 10.0]})
    notebook_step = _first_nonfinite_step_printed(nbformat.read(executed, as_version=4))
    cli = subprocess.run([sys.executable, "-m", "nanlab", "run", "high-learning-rate", "--framework", framework,
                          "--seed", "4", "--steps", "40", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout)["first_nonfinite_step"] == notebook_step
