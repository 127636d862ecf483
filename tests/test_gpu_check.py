"""``make gpu-check`` on a machine without a CUDA GPU: one line saying so, exit 0, nothing written."""
import subprocess
import sys

import pytest


def test_gpu_check_says_in_one_line_that_there_is_no_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: make gpu-check runs the real checks")
    done = subprocess.run([sys.executable, "-m", "tools.gpu_check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.count("\n") == 1 and "no CUDA GPU" in done.stdout
