"""The Run record, device resolution and seeding."""
import json
import math
import subprocess
import sys

import pytest

import nanlab
from nanlab.devices import resolve_device
from nanlab.frameworks import get_framework, list_frameworks
from nanlab.seeding import seed_everything


def test_run_to_dict_is_json_even_with_nan():
    run = nanlab.Run(cause="c", framework="torch", device="cpu", seed=0, fix=None, steps=3,
                     losses=[1.0, float("inf"), float("nan")], grad_norms=[1.0, 2.0, float("nan")],
                     first_nonfinite_step=1)
    record = json.loads(json.dumps(run.to_dict(), allow_nan=False))
    assert record["losses"] == [1.0, "inf", "nan"]
    assert record["first_nonfinite_step"] == 1 and not run.finite
    assert "non-finite at step 1" in run.summary()


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_auto_is_the_gpu_when_the_framework_sees_one_else_the_cpu(framework):
    sees_gpu = get_framework(framework).backend.has_gpu()
    assert resolve_device("auto", framework) == ("cuda" if sees_gpu else "cpu")
    assert resolve_device("cpu", framework) == "cpu"
    assert resolve_device("GPU" if sees_gpu else "CPU", framework) == ("cuda" if sees_gpu else "cpu")


def test_cuda_asked_for_but_absent_is_one_clear_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(nanlab.NanlabError) as raised:
        resolve_device("cuda", "torch")
    assert "no GPU" in str(raised.value) and "\n" not in str(raised.value)


def test_unknown_device_names_the_valid_ones():
    with pytest.raises(nanlab.NanlabError, match="valid devices: auto, cpu, cuda"):
        resolve_device("tpu", "torch")


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_seed_everything_makes_runs_repeat(framework):
    first = nanlab.reproduce("high-learning-rate", framework, "cpu", seed=3, fix="lower-lr", steps=5)
    second = nanlab.reproduce("high-learning-rate", framework, "cpu", seed=3, fix="lower-lr", steps=5)
    other = nanlab.reproduce("high-learning-rate", framework, "cpu", seed=4, fix="lower-lr", steps=5)
    assert first.losses == second.losses
    assert first.losses != other.losses


def test_seed_everything_seeds_python_and_numpy():
    import random

    import numpy as np

    seed_everything(7)
    drawn = (random.random(), np.random.rand())
    seed_everything(7)
    assert drawn == (random.random(), np.random.rand())


def test_import_nanlab_imports_no_framework_and_no_integration():
    """Not even recognising hosts does: nanlab.watch on a plain object looks for trainers only among loaded modules."""
    code = ("import sys, nanlab; nanlab.list_causes(); from nanlab.frameworks import host_of; host_of(object()); "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'transformers', 'accelerate', 'lightning', "
            "'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_steps_must_be_positive():
    with pytest.raises(nanlab.NanlabError, match="positive"):
        nanlab.reproduce("high-learning-rate", steps=0)
    assert math.isfinite(nanlab.reproduce("high-learning-rate", "torch", "cpu", fix="lower-lr", steps=2).losses[-1])


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_a_bad_seed_is_one_clear_line(seed):
    with pytest.raises(nanlab.NanlabError, match=r"seed must be an integer in 0\.\.4294967295") as raised:
        nanlab.reproduce("high-learning-rate", seed=seed, steps=1)
    assert "\n" not in str(raised.value)


def test_each_framework_is_one_object_resolved_from_its_aliases():
    names = {framework.name: framework for framework in list_frameworks()}
    assert list(names) == ["torch", "tensorflow"]
    for alias in ("torch", "PyTorch", "pytorch"):
        assert get_framework(alias) is names["torch"]
    for alias in ("tensorflow", "tf", "Keras"):
        assert get_framework(alias) is names["tensorflow"]
    assert names["torch"].notebook(1, "x") == "notebooks/pytorch/01-x.ipynb"
    with pytest.raises(nanlab.NanlabError, match="valid frameworks: torch, tensorflow"):
        get_framework("jax")


def test_a_missing_framework_is_an_install_hint_not_a_traceback(monkeypatch):
    framework = get_framework("torch")
    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without torch looks like to import
    monkeypatch.delitem(sys.modules, "nanlab.frameworks.torch.loop", raising=False)
    with pytest.raises(nanlab.NanlabError, match=r"PyTorch is not installed; install it with: pip install"):
        framework.loop
