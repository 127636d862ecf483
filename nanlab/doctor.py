"""``nanlab doctor``: is the machine in front of the class ready for the notebooks?

It reports Python's version; for every framework nanlab knows, its version, the devices it sees, what each device
can run (float16, bfloat16), the CUDA and cuDNN versions it was built with and whether it is a CPU-only build; and
whether the ``python3`` Jupyter kernel the notebooks ask for exists and can import nanlab. Each finding is one
line; a problem carries its fix on the same line. ``nanlab doctor`` exits 0 when all is well and 1 when it found a
problem.

A CPU-only build is fine on a machine without an NVIDIA GPU (the notebooks run on CPU); it is a problem only when
the machine has one that the framework cannot use.
"""
from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

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
