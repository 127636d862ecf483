"""``nanlab doctor``: is the machine in front of the class ready for the notebooks?

It reports Python's version; for every framework nanlab knows, its version, the devices it sees, what each device
can run (float16, bfloat16), the CUDA and cuDNN versions it was built with and whether it is a CPU-only build; and
whether the ``python3`` Jupyter kernel the notebooks ask for exists and can import nanlab. Each finding is one
line; a problem carries its fix on the same line. ``nanlab doctor`` exits 0 when all is well and 1 when it found a
problem.

A CPU-only build is fine on a machine without an NVIDIA GPU (the notebooks run on CPU); it is a problem only when
the machine has one that the framework cannot use.

``nanlab doctor --smoke`` runs something instead: the end-to-end path a lab takes, in about a minute. For each
installed framework, on the device the notebooks would pick (``auto``): one cause's broken setting goes non-finite,
``nanlab.watch`` around the same training raises and names that cause, and a fix stays finite and learns; then a
figure of the runs is saved to a temporary file and read back. One line per step, the same ``ok`` / ``PROBLEM``
lines as the report; exit 0 when every step passed and 1 otherwise. A framework that is not installed is skipped
(the plain report says so); none installed at all is a problem.
"""
from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from nanlab.errors import NanlabError
from nanlab.frameworks import Framework, list_frameworks

MIN_PYTHON = (3, 11)
KERNEL = "python3"  # the kernelspec every notebook names (tools/execute_notebooks.py)
GPU_GUIDE = "docs/gpu.md"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, what was found, and for a problem, how to fix it."""

    topic: str
    found: str
    fix: str | None = None

    @property
    def problem(self) -> bool:
        return self.fix is not None

    def line(self) -> str:
        if self.problem:
            return f"PROBLEM {self.topic}: {self.found} -> fix: {self.fix}"
        return f"ok      {self.topic}: {self.found}"


@dataclass(frozen=True)
class BuildInfo:
    """What a framework was compiled for: the CUDA and cuDNN versions (None in a CPU-only build)."""

    cuda: str | None
    cudnn: str | None

    @property
    def cpu_only(self) -> bool:
        return self.cuda is None


def gpu_on_machine() -> bool:
    """True when the machine has an NVIDIA driver loaded, whatever the frameworks see."""
    return pathlib.Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Finding:
    found = ".".join(map(str, version))
    if tuple(version[:2]) < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        return Finding("python", f"{found} is older than {wanted}",
                       f"use Python {wanted} or newer (conda env create -f environment.yml)")
    return Finding("python", f"{found} ({platform.python_implementation()}, {sys.executable})")


def _build(framework: Framework) -> BuildInfo:
    """The backend's ``build_info()`` (``{"cuda": ..., "cudnn": ...}``, None for what the build lacks)."""
    return BuildInfo(**framework.backend.build_info())


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def check_framework(framework: Framework, gpu_present: bool) -> list[Finding]:
    """The framework's version, devices and their float16/bfloat16 support, and its build."""
    try:
        backend = framework.backend
    except NanlabError as missing:
        return [Finding(framework.name, "not installed", str(missing).split("install it with: ")[-1])]
    devices = ["cpu", "cuda"] if backend.has_gpu() else ["cpu"]
    support = "; ".join(
        f"{device}: float16 {_yes(caps.get('float16', False))}, bfloat16 {_yes(caps.get('bfloat16', False))}"
        for device, caps in ((device, backend.capabilities(device)) for device in devices))
    findings = [Finding(framework.name, f"{backend.version()}; sees {', '.join(devices)} ({support})")]
    build = _build(framework)
    built = "CPU-only build" if build.cpu_only else f"built for CUDA {build.cuda}, cuDNN {build.cudnn or 'none'}"
    topic = f"{framework.name} build"
    if gpu_present and build.cpu_only:
        findings.append(Finding(topic, f"{built}, but this machine has an NVIDIA GPU",
                                f"install the CUDA build as {GPU_GUIDE} shows"))
    elif gpu_present and "cuda" not in devices:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = f" (CUDA_VISIBLE_DEVICES={hidden!r})" if hidden is not None else ""
        findings.append(Finding(topic, f"{built}, yet it sees no GPU{why}",
                                f"unset CUDA_VISIBLE_DEVICES, or match driver and CUDA versions ({GPU_GUIDE})"))
    else:
        where = "no NVIDIA GPU on this machine" if not gpu_present else "the GPU is in use"
        findings.append(Finding(topic, f"{built}; {where}"))
    return findings


def check_kernel(specs: dict[str, list[str]] | None = None) -> Finding:
    """The ``python3`` kernelspec exists and its Python can import nanlab. ``specs`` maps kernel names to their
    command lines (read from Jupyter when None)."""
    fix = "python -m ipykernel install --sys-prefix  (in the environment nanlab is installed in)"
    if specs is None:
        try:
            from jupyter_client.kernelspec import KernelSpecManager
        except ModuleNotFoundError:
            return Finding("jupyter kernel", "Jupyter is not installed", 'pip install -e ".[dev]"')
        manager = KernelSpecManager()
        specs = {name: manager.get_kernel_spec(name).argv for name in manager.find_kernel_specs()}
    if KERNEL not in specs:
        return Finding("jupyter kernel", f"no {KERNEL!r} kernelspec (the notebooks ask for it); "
                       f"found: {', '.join(sorted(specs)) or 'none'}", fix)
    python = specs[KERNEL][0]
    if python in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}:
        return Finding("jupyter kernel", f"{KERNEL} runs this Python ({sys.executable})")
    imports = subprocess.run([python, "-c", "import nanlab"], capture_output=True, timeout=60) \
        if pathlib.Path(python).exists() else None
    if imports is None or imports.returncode != 0:
        return Finding("jupyter kernel", f"{KERNEL} runs {python}, which cannot import nanlab", fix)
    return Finding("jupyter kernel", f"{KERNEL} runs {python}, which imports nanlab")


def examine() -> list[Finding]:
    """Every check, in report order."""
    gpu_present = gpu_on_machine()
    findings = [check_python()]
    for framework in list_frameworks():
        findings += check_framework(framework, gpu_present)
    findings.append(check_kernel())
    return findings


def run() -> int:
    """Print the report; 0 when all is well, 1 when there is a problem."""
    findings = examine()
    for finding in findings:
        print(finding.line())
    problems = sum(finding.problem for finding in findings)
    print(f"{problems} problem{'s' if problems != 1 else ''} found" if problems else "all is well")
    return 1 if problems else 0


# The catalogue's cause number 2, the log of zero: a few seconds in each framework, and the watch names it at its op
# (the log). Asked by number: a cause's id is written only in its own package.
SMOKE_CAUSE_NUMBER = 2
SMOKE_DEVICE = "auto"  # the device the notebooks pick
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _step(topic: str, action: Callable[[], str], fix: str) -> Finding:
    """Run one smoke step: its ``found`` text and seconds, or a problem naming the exception and ``fix``."""
    started = time.perf_counter()
    try:
        found = action()
    except Exception as error:  # a step that fails is one line of the report, never a traceback
        message = (str(error).strip().splitlines() or [""])[0]
        return Finding(topic, f"{type(error).__name__}: {message}"[:240], fix)
    return Finding(topic, f"{found} ({time.perf_counter() - started:.1f} s)")


class SmokeFailure(Exception):
    """A smoke step ran but did not see what it checks."""


def _reproduce(cause, framework: Framework, fix: str | None):
    from nanlab.reproduce import reproduce

    return reproduce(cause, framework, SMOKE_DEVICE, seed=0, fix=fix)


def _broken(cause, framework: Framework, runs: list) -> str:
    run = _reproduce(cause, framework, None)
    runs.append(run)
    if run.first_nonfinite_step is None:
        raise SmokeFailure(f"the broken setting of {cause.id} stayed finite for {len(run.losses)} steps")
    return f"{cause.id}, broken: non-finite at step {run.first_nonfinite_step} on {run.device}"


def _watched(cause, framework: Framework) -> str:
    import nanlab
    from nanlab.devices import resolve_device
    from nanlab.seeding import seed_everything

    device = resolve_device(SMOKE_DEVICE, framework)
    seed_everything(0, framework)
    with framework.backend.on_device(device):
        training = cause.recipe(framework).SETTINGS["broken"](seed=0, device=device)
        try:
            with nanlab.watch(training, overflow_patience=1):
                framework.loop.train(training, cause.steps)
        except nanlab.NonFiniteError as raised:
            report = raised.report
        else:
            raise SmokeFailure(f"nanlab.watch did not raise in {cause.steps} steps of {cause.id}'s broken setting")
    if report.cause != cause.id:
        raise SmokeFailure(f"nanlab.watch named {report.cause!r} instead of {cause.id!r} at step {report.step}")
    where = " / ".join(part for part in (report.module, report.op) if part) or report.phase
    return f"nanlab.watch raised at step {report.step} ({report.phase}, {where}) naming {report.cause}"


def _fixed(cause, framework: Framework, runs: list) -> str:
    fix = next(fix.id for fix in cause.fixes if not fix.hides_problem)
    run = _reproduce(cause, framework, fix)
    runs.append(run)
    if not (run.finite and run.learned):
        raise SmokeFailure(f"the fix {fix} did not stay finite and learn: {run.summary()}")
    return f"fix {fix}: finite for {len(run.losses)} steps and learned"


def _plot(runs: list) -> str:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # no display needed; a notebook that already chose its backend keeps it
    import matplotlib.pyplot as plt

    from nanlab.plot import plot_comparison

    figure = plot_comparison(runs)
    with tempfile.TemporaryDirectory(prefix="nanlab-smoke-") as folder:
        path = pathlib.Path(folder) / "smoke.png"
        figure.savefig(path, dpi=72)
        plt.close(figure)
        data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE) or len(data) < 5000:
        raise SmokeFailure(f"the saved figure is not a plausible PNG ({len(data)} bytes)")
    return f"figure of {len(runs)} runs saved to a temporary PNG and read back ({len(data) // 1024} KiB)"


def smoke_steps() -> Iterator[Finding]:
    """The end-to-end check, one finding per step as it finishes (see the module's docstring)."""
    from nanlab.registry import list_causes

    cause = next(cause for cause in list_causes() if cause.number == SMOKE_CAUSE_NUMBER)
    runs, installed = [], []
    for framework in list_frameworks():
        try:
            framework.backend
        except NanlabError:
            yield Finding(f"smoke {framework.name}", "not installed; skipped")
            continue
        installed.append(framework)
        fix = (f"the whole error: nanlab run {cause.id} --framework {framework.name} --all-fixes; "
               "send it with nanlab doctor's report")
        yield _step(f"smoke {framework.name} reproduce", lambda: _broken(cause, framework, runs), fix)
        yield _step(f"smoke {framework.name} watch", lambda: _watched(cause, framework), fix)
        yield _step(f"smoke {framework.name} fix", lambda: _fixed(cause, framework, runs), fix)
    if not installed:
        yield Finding("smoke", "no framework is installed",
                      " or ".join(framework.install_hint for framework in list_frameworks()))
    elif runs:
        yield _step("smoke plot", lambda: _plot(runs), "check matplotlib: python -c 'import matplotlib.pyplot'")


def smoke() -> int:
    """Print one line per smoke step as it finishes; 0 when every step passed, 1 otherwise."""
    started = time.perf_counter()
    problems = steps = 0
    for finding in smoke_steps():
        print(finding.line(), flush=True)
        steps += 1
        problems += finding.problem
    seconds = time.perf_counter() - started
    print(f"smoke: {problems} of {steps} steps failed ({seconds:.0f} s)" if problems
          else f"smoke: all {steps} steps passed in {seconds:.0f} s")
    return 1 if problems else 0
