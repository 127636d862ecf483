"""The command line: each bad input is one line on stderr and exit status 2; JSON for machines."""
import json
import subprocess
import sys

import pytest


def nanlab_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanlab", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, says", [
    (["run", "no-such-cause"], "valid causes: high-learning-rate"),
    (["run", "high-learning-rate", "--framework", "jax"], "valid frameworks: torch, tensorflow"),
    (["run", "high-learning-rate", "--device", "tpu"], "valid devices: auto, cpu, cuda"),
    (["run", "high-learning-rate", "--fix", "more-coffee"], "valid fixes: lower-lr"),
    (["verify", "--cause", "no-such-cause"], "valid causes:"),
    (["verify", "--seeds", "0"], "at least one seed"),
    (["run", "log-of-zero", "--seed", "-1"], "seed must be an integer in 0..4294967295"),
    (["run", "log-of-zero", "--steps", "0"], "steps must be a positive integer"),
])
def test_bad_input_is_one_line_and_exit_2(args, says):
    result = nanlab_cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr
    assert "Traceback" not in result.stderr


def test_cuda_absent_is_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = nanlab_cli("run", "high-learning-rate", "--device", "cuda")
    assert result.returncode == 2 and "no GPU" in result.stderr


def test_list_names_every_cause():
    import nanlab

    result = nanlab_cli("list")
    assert result.returncode == 0
    for cause in nanlab.list_causes():
        assert cause.id in result.stdout
    assert "wrong fixes: clip-log-output" in result.stdout, "wrong fixes are told apart from real ones"


def test_run_json_and_plot(tmp_path):
    plot = tmp_path / "runs.png"
    result = nanlab_cli("run", "high-learning-rate", "--all-fixes", "--json", "--seed", "2", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [run["fix"] for run in runs] == [None, "lower-lr", "clip-grad-norm", "lr-finder"]
    assert runs[0]["first_nonfinite_step"] is not None
    assert all(run["learned"] for run in runs[1:])
    assert plot.stat().st_size > 10_000


def test_verify_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "rows.json"
    result = nanlab_cli("verify", "--cause", "high-learning-rate", "--framework", "torch", "--seeds", "1",
                        "--json", str(out), "--plots", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "1 passed, 0 failed" in result.stdout
    rows = json.loads(out.read_text())
    assert rows[0]["passed"] and set(rows[0]["fixes"]) == {"lower-lr", "clip-grad-norm", "lr-finder"}
    assert (tmp_path / "plots" / "high-learning-rate-torch.png").is_file()
