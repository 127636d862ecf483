"""Download every wheel a lab needs once, so that 30 machines install without the internet (`make wheelhouse`).

Usage: python -m tools.wheelhouse [--out build/wheelhouse] [--extras torch,tensorflow,integrations,dev] [--dry-run]

Runs ``pip wheel`` on the repository with the extras asked for (by default the ones `make env` installs): every
dependency is downloaded (or, for a source distribution, built) as a wheel into ``--out``, beside a wheel of nanlab
itself and setuptools (so that an editable install of the repository builds offline too). The versions are pinned to
the ones installed in the environment that runs this (``constraints.txt``, written next to the wheels): the lab gets
what this machine tested. torch's local build label (``2.13.0+cpu``, ``+cu128``) picks the PyTorch index that serves
that build, so a CPU lab does not download the CUDA build (several GB). The wheels are for this machine's platform
and Python; build the wheelhouse on a machine like the lab's.

Then, on each lab machine, with no network (the command is also written to ``<out>/INSTALL.txt``):

    python3 -m venv .venv
    .venv/bin/pip install --no-index --find-links build/wheelhouse -c build/wheelhouse/constraints.txt \\
        -e ".[torch,tensorflow,integrations,dev]"

or, with the default extras, ``PIP_NO_INDEX=1 PIP_FIND_LINKS=build/wheelhouse make lab`` (make env's own install,
offline). ``--dry-run`` writes nothing and prints the pip command it would run.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_EXTRAS = "torch,tensorflow,integrations,dev"  # what make env installs
PYTORCH_INDEX = "https://download.pytorch.org/whl/{label}"
SKIP = {"nanlab", "pip"}  # nanlab is built from the repository; pip comes with every venv


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """Every distribution installed in this environment, by canonical name (nanlab and pip left out)."""
    versions = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name and _canonical(name) not in SKIP:
            versions[_canonical(name)] = distribution.version
    return dict(sorted(versions.items()))


def constraints(versions: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in versions.items())


def torch_index(versions: dict[str, str]) -> str | None:
    """The PyTorch index that serves the installed torch build (``+cpu`` → .../whl/cpu), or None for PyPI's."""
    label = versions.get("torch", "").partition("+")[2]
    return PYTORCH_INDEX.format(label=label) if label else None


def pip_command(out: pathlib.Path, extras: str, versions: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(out), "-c", str(out / "constraints.txt"),
               f".[{extras}]", "setuptools", "wheel"]
    index = torch_index(versions)
    if index and "torch" in extras.split(","):
        command += ["--extra-index-url", index]
    return command


def install_command(out: pathlib.Path, extras: str) -> str:
    folder = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    return (f"pip install --no-index --find-links {folder} -c {folder}/constraints.txt -e \".[{extras}]\""
            f"    # from a copy of the repository; or, without it: pip install --no-index --find-links {folder} "
            f"\"nanlab[{extras}]\"")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "wheelhouse")
    parser.add_argument("--extras", default=DEFAULT_EXTRAS, help=f"nanlab's extras to include ({DEFAULT_EXTRAS})")
    parser.add_argument("--dry-run", action="store_true", help="print the pip command; download and write nothing")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    versions = installed_versions()
    command = pip_command(out, args.extras, versions)
    print(shlex.join(command))
    if args.dry_run:
        print(f"(dry run: {len(versions)} pinned versions; install with: {install_command(out, args.extras)})")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "constraints.txt").write_text(constraints(versions))
    status = subprocess.run(command, cwd=ROOT).returncode
    if status == 0:
        (out / "INSTALL.txt").write_text(install_command(out, args.extras) + "\n")
        wheels = sorted(out.glob("*.whl"))
        size = sum(wheel.stat().st_size for wheel in wheels) / 2**20
        print(f"{len(wheels)} wheels, {size:.0f} MiB, in {out}; install with: {install_command(out, args.extras)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
