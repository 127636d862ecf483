"""`make wheelhouse`: one download of every wheel a lab installs, pinned to this environment's versions, for
offline installs. The download itself is not run here (several GB); its command is checked through `make -n` and
the tool's dry run, and the offline install command docs/teaching.md gives is the one the tool prints."""
import pathlib
import re
import shlex
import subprocess
import sys

from tools import wheelhouse

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_make_wheelhouse_runs_the_tool_into_build_wheelhouse_with_the_extras_make_env_installs():
    env_extras = re.search(r'-e "\.\[([\w,]+)\]"', (ROOT / "Makefile").read_text()).group(1)
    assert env_extras == wheelhouse.DEFAULT_EXTRAS, "offline, make env installs from the wheelhouse"
    lines = subprocess.run(["make", "-n", "-o", ".venv/.installed", "wheelhouse"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    command = shlex.split(next(line for line in lines if "tools.wheelhouse" in line))
    assert command[command.index("--out") + 1] == "build/wheelhouse"
    assert command[command.index("--extras") + 1] == env_extras
    narrower = subprocess.run(["make", "-n", "-o", ".venv/.installed", "wheelhouse", "WHEELHOUSE_EXTRAS=torch,dev"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--extras torch,dev" in narrower


def test_the_dry_run_prints_pip_wheel_pinned_to_this_environment_and_writes_nothing(tmp_path):
    out = tmp_path / "wheelhouse"
    printed = subprocess.run([sys.executable, "-m", "tools.wheelhouse", "--dry-run", "--out", str(out)], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    command = shlex.split(printed[0])
    assert command[1:4] == ["-m", "pip", "wheel"]
    assert command[command.index("--wheel-dir") + 1] == str(out)
    assert command[command.index("-c") + 1] == str(out / "constraints.txt")
    assert f".[{wheelhouse.DEFAULT_EXTRAS}]" in command and "setuptools" in command
    assert "pip install --no-index --find-links" in printed[1]
    assert not out.exists(), "a dry run downloads and writes nothing"


def test_constraints_pin_every_installed_version_but_nanlab_and_torch_builds_pick_their_index():
    versions = wheelhouse.installed_versions()
    assert "nanlab" not in versions and "pip" not in versions
    assert "numpy" in versions and "matplotlib" in versions
    pinned = wheelhouse.constraints(versions).splitlines()
    assert f"numpy=={versions['numpy']}" in pinned
    assert wheelhouse.torch_index({"torch": "2.13.0+cpu"}) == "https://download.pytorch.org/whl/cpu"
    assert wheelhouse.torch_index({"torch": "2.13.0+cu128"}) == "https://download.pytorch.org/whl/cu128"
    assert wheelhouse.torch_index({"torch": "2.13.0"}) is None
    command = wheelhouse.pip_command(pathlib.Path("/w"), "torch,dev", {"torch": "2.13.0+cpu"})
    assert command[-2:] == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    assert "--extra-index-url" not in wheelhouse.pip_command(pathlib.Path("/w"), "tensorflow", {"torch": "2.13.0+cpu"})


def test_docs_teaching_gives_the_offline_install_command():
    teaching = (ROOT / "docs" / "teaching.md").read_text()
    assert "make wheelhouse" in teaching
    assert "pip install --no-index --find-links build/wheelhouse" in teaching
    assert wheelhouse.install_command(ROOT / "build" / "wheelhouse", wheelhouse.DEFAULT_EXTRAS).split("    #")[0] \
        in teaching
    assert "PIP_NO_INDEX=1 PIP_FIND_LINKS=build/wheelhouse make lab" in teaching
