"""``make gpu-check``: the PyTorch checks that need a CUDA GPU, as one prepared command (about 10 minutes).

    python -m tools.gpu_check            # on a machine where torch sees a CUDA GPU
    python -m tools.gpu_check --budget 600

1. the catalogue on the GPU, one seed (``nanlab verify --framework torch --seeds 1 --device cuda``), written as
   ``docs/reproduction-cuda.md`` (the same table ``docs/reproduction-cpu.md`` has for the CPU);
2. the watch's tests with CUDA paths (``pytest -m cuda``: RNG restore in the replay, labels checked before the loss,
   ``GradScaler("cuda")``, ``torch.compile``), which skip on a CPU machine;
3. the PyTorch benchmarks on the GPU (``benchmarks/bench_torch.py --quick --device cuda``, the per-step host read
   included), appended to ``docs/reproduction-cuda.md``.
Each step gets what is left of the budget; a step that runs out is reported as such. On a machine without a CUDA
GPU it says so in one line and exits 0.
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reproduction-cuda.md"


def _cuda_device() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _run(command: list[str], deadline: float) -> tuple[int | None, str]:
    """Run ``command`` from the repository root until ``deadline``; (exit code or None when out of time, output)."""
    left = deadline - time.monotonic()
    if left <= 5:
        return None, "not run: the time budget was spent\n"
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired as expired:  # its captured output is bytes whatever text= says
        return None, (expired.stdout or b"").decode(errors="replace") + "\n(stopped: the time budget was spent)\n"
    return done.returncode, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for all three steps (default 600)")
    args = parser.parse_args(argv)
    device = _cuda_device()
    if device is None:
        print("gpu-check: torch sees no CUDA GPU on this machine, so there is nothing to check here "
              "(nanlab doctor says why; docs/gpu.md sets one up)")
        return 0
    deadline = time.monotonic() + args.budget
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        rows = pathlib.Path(folder) / "verify-cuda.json"
        command = [python, "-m", "nanlab", "verify", "--framework", "torch", "--seeds", "1", "--device", "cuda",
                   "--json", str(rows)]
        verify_code, verify_out = _run(command, deadline)
        if rows.exists():
            _run([python, "-m", "tools.reproduction_table", str(rows), str(OUT), "--command",
                  "python -m tools.gpu_check (nanlab verify --framework torch --seeds 1 --device cuda)"], deadline)
        else:
            OUT.write_text(f"# Reproduction on {device}\n\nnanlab verify wrote no rows:\n\n"
                           f"```\n{verify_out[-3000:]}```\n")
    tests_code, tests_out = _run([python, "-m", "pytest", "-m", "cuda", "-q", "tests"], deadline)
    bench_code, bench_out = _run([python, "benchmarks/bench_torch.py", "--quick", "--device", "cuda"], deadline)
    with OUT.open("a") as handle:
        handle.write(f"\n## The watch's CUDA tests on {device}\n\n`python -m pytest -m cuda tests` "
                     f"(exit {tests_code}):\n\n```\n{tests_out[-2000:]}```\n")
        handle.write(f"\n## Benchmarks on {device}\n\n`python benchmarks/bench_torch.py --quick --device cuda` "
                     f"(exit {bench_code}):\n\n{bench_out}\n")
    print(f"gpu-check on {device}: verify exit {verify_code}, CUDA tests exit {tests_code}, benchmarks exit "
          f"{bench_code}; written to {OUT.relative_to(ROOT)}")
    return 0 if (verify_code, tests_code, bench_code) == (0, 0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
