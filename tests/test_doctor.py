"""`nanlab doctor`: one line per finding, a problem names its fix, exit 0 when all is well and 1 otherwise."""
import dataclasses
from types import SimpleNamespace

import pytest

from nanlab import doctor
from nanlab.cli import main
from nanlab.doctor import BuildInfo, Finding, check_framework, check_kernel, check_python
from nanlab.frameworks import Framework


def fake_framework(has_gpu: bool, build: BuildInfo, bfloat16_on_gpu: bool = True):
    def capabilities(device):
        return {"float16": True, "bfloat16": bfloat16_on_gpu if device == "cuda" else True}

    backend = SimpleNamespace(has_gpu=lambda: has_gpu, capabilities=capabilities, version=lambda: "fakeflow 1.0",
                              build_info=lambda: dataclasses.asdict(build))
    return SimpleNamespace(name="fakeflow", backend=backend)


def test_this_machine_is_ready_and_the_report_names_every_framework(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "PROBLEM" not in out and out.strip().endswith("all is well")
    for expected in ("python:", "torch: torch ", "tensorflow: tensorflow ", "keras ", "sees cpu", "float16",
                     "bfloat16", "build:", "jupyter kernel: python3"):
        assert expected in out


def test_a_missing_framework_is_a_problem_with_its_install_command():
    absent = Framework(name="absentflow", title="AbsentFlow", aliases=(), notebook_folder="absentflow",
                       install_hint="pip install absentflow", root_modules=("nanlab_absent_framework",),
                       watchable="nothing", package="nanlab_absent_framework")
    finding, = check_framework(absent, gpu_present=False)
    assert finding.problem and finding.fix == "pip install absentflow"
    assert finding.line() == "PROBLEM absentflow: not installed -> fix: pip install absentflow"


def test_a_cpu_only_build_is_fine_without_a_gpu_and_a_problem_with_one():
    cpu_build = fake_framework(has_gpu=False, build=BuildInfo(None, None))
    without = check_framework(cpu_build, gpu_present=False)
    assert not any(finding.problem for finding in without)
    assert "CPU-only build" in without[1].found
    with_gpu = check_framework(cpu_build, gpu_present=True)
    assert with_gpu[1].problem and "docs/gpu.md" in with_gpu[1].fix


def test_a_cuda_build_reports_its_versions_devices_and_what_each_device_runs():
    cuda_build = fake_framework(has_gpu=True, build=BuildInfo("12.8", "91002"), bfloat16_on_gpu=False)
    summary, build = check_framework(cuda_build, gpu_present=True)
    assert not summary.problem and not build.problem
    assert "sees cpu, cuda" in summary.found and "cuda: float16 yes, bfloat16 no" in summary.found
    assert "CUDA 12.8, cuDNN 91002" in build.found


def test_a_cuda_build_that_sees_no_gpu_on_a_gpu_machine_is_a_problem(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    _, build = check_framework(fake_framework(has_gpu=False, build=BuildInfo("12.8", "91002")), gpu_present=True)
    assert build.problem and "CUDA_VISIBLE_DEVICES=''" in build.found


@pytest.mark.parametrize("specs, ok", [
    ({}, False),
    ({"other": ["python"]}, False),
    ({"python3": ["/nonexistent/bin/python", "-m", "ipykernel_launcher"]}, False),
    ({"python3": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]}, True),
])
def test_the_notebooks_kernel_must_exist_and_import_nanlab(specs, ok):
    finding = check_kernel(specs)
    assert finding.problem is not ok
    if not ok:
        assert "ipykernel install" in finding.fix


def test_an_old_python_is_a_problem():
    assert check_python((3, 10, 4)).problem and not check_python((3, 12, 1)).problem


def test_any_problem_makes_the_exit_status_1(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "examine", lambda: [Finding("python", "3.12"), Finding("x", "broken", "fix it")])
    assert doctor.run() == 1
    assert capsys.readouterr().out.splitlines()[-2:] == ["PROBLEM x: broken -> fix: fix it", "1 problem found"]


# `nanlab doctor --smoke`: the end-to-end check a lecturer runs before the lab.
def test_the_smoke_check_runs_a_cause_the_watch_a_fix_and_a_plot_in_each_installed_framework(monkeypatch, capsys):
    pytest.importorskip("torch")
    from nanlab.frameworks import get_framework

    absent = Framework(name="absentflow", title="AbsentFlow", aliases=(), notebook_folder="absentflow",
                       install_hint="pip install absentflow", root_modules=("nanlab_absent_framework",),
                       watchable="nothing", package="nanlab_absent_framework")
    monkeypatch.setattr(doctor, "list_frameworks", lambda: [get_framework("torch"), absent])
    assert main(["doctor", "--smoke"]) == 0
    lines = capsys.readouterr().out.splitlines()
    topics = [line.split(":")[0].split(maxsplit=1)[1] for line in lines[:-1]]
    assert topics == ["smoke torch reproduce", "smoke torch watch", "smoke torch fix", "smoke absentflow",
                      "smoke plot"]
    assert all(line.startswith("ok ") for line in lines[:-1])
    assert "naming log-of-zero" in lines[1] and "not installed; skipped" in lines[3]
    assert "saved to a temporary PNG" in lines[4]
    assert lines[-1].startswith("smoke: all 5 steps passed in ")


def test_a_failing_smoke_step_is_one_problem_line_and_exit_status_1(monkeypatch, capsys):
    pytest.importorskip("torch")
    from nanlab.frameworks import get_framework

    monkeypatch.setattr(doctor, "list_frameworks", lambda: [get_framework("torch")])

    def broken_watch(cause, framework):
        raise doctor.SmokeFailure("nanlab.watch did not raise")

    monkeypatch.setattr(doctor, "_watched", broken_watch)
    assert doctor.smoke() == 1
    lines = capsys.readouterr().out.splitlines()
    problem, = [line for line in lines if line.startswith("PROBLEM")]
    assert problem.startswith("PROBLEM smoke torch watch: SmokeFailure: nanlab.watch did not raise -> fix: ")
    assert "nanlab run log-of-zero --framework torch" in problem
    assert lines[-1].startswith("smoke: 1 of 4 steps failed")


def test_no_framework_installed_is_a_smoke_problem(monkeypatch, capsys):
    absent = Framework(name="absentflow", title="AbsentFlow", aliases=(), notebook_folder="absentflow",
                       install_hint="pip install absentflow", root_modules=("nanlab_absent_framework",),
                       watchable="nothing", package="nanlab_absent_framework")
    monkeypatch.setattr(doctor, "list_frameworks", lambda: [absent])
    assert doctor.smoke() == 1
    assert "PROBLEM smoke: no framework is installed -> fix: pip install absentflow" in capsys.readouterr().out


@pytest.mark.slow
def test_the_smoke_check_passes_on_this_machine_in_about_a_minute(capsys):
    import time

    started = time.perf_counter()
    assert main(["doctor", "--smoke"]) == 0, capsys.readouterr().out
    assert time.perf_counter() - started < 120, "the pre-lab check should take about a minute"
