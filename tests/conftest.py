"""Shared pytest set-up: TensorFlow's environment before any test imports it, the ``browser`` and ``slow``
markers, and the frameworks as fixtures.

Many test modules import TensorFlow directly, before nanlab's TensorFlow backend (which sets these defaults) would.
Without oneDNN's reordered float sums off, CPU results depend on which module happened to import TensorFlow first
(measured: the TF RNN contract's clip-grad-norm seed 1 spikes late with oneDNN on).
"""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Under pytest-xdist (`make test`, `make test-quick`: `-n 2`, one worker a core) each worker keeps torch to one
# thread (and its subprocesses, which inherit it): with torch's default of a thread a core, two workers would run
# four threads on two cores. Set before any test imports torch (xdist sets the variable before conftest loads).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (skips without a browser)")
    config.addinivalue_line("markers", "slow: left out of the quick tier, `pytest -m \"not slow\"` (`make test-quick`)")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skips without one); `make gpu-check` runs them")


# The quick tier (`pytest -m "not slow"`, `make test-quick`) leaves out what takes minutes. Whole kinds, by path,
# so that new ones are slow from the start: every notebook nbval runs (any .ipynb), the reproduction contract (any
# tests/test_contract*.py), the browser tests, the distributed watch, the trainers under DDP (test_host_ddp_*) and
# Keras on JAX (one subprocess with every JAX case).
SLOW_MODULES = ("test_contract", "test_browser.py", "test_watch_torch_distributed.py", "test_host_ddp_",
                "test_host_keras_jax.py")
# Single slow tests, as "module::test" (every parameter) or "module::test[id]" (that one), with the seconds each
# took on 2 cores (OMP_NUM_THREADS=1, `pytest --durations=80`): the ones that execute a notebook
# or build the handout or the site, the MirroredStrategy fit, the subprocesses that import every integration, and
# TensorFlow comparisons over seeds; the quick tier keeps a faster test of each mechanism.
SLOW_TESTS = {
    "test_notebooks.py::test_notebook_with_other_parameters_matches_the_cli": "24.9 s tensorflow, 12.7 s torch",
    "test_student.py::test_a_real_student_copy_fails_only_in_its_exercises": "100 s",
    "test_student.py::test_the_handout_holds_every_notebook_without_solutions_and_every_file_they_read":
        "15 s (building the handout)",
    "test_links.py::test_make_site_builds_every_notebook_and_every_relative_link_opens_in_it": "25 s (the site)",
    "test_causes_high_learning_rate.py::test_warmup_to_the_broken_rate_only_postpones_the_nan[tensorflow]": "22 s",
    "test_watch_torch.py::test_nothing_under_frameworks_torch_imports_the_catalogue": "17 s",
    "test_causes_optimizer_hyperparameters.py::test_keras_fit_with_adam_beta_1_of_one": "17 s",
    "test_causes_math_ops.py::test_clip_logits_learns_the_classes_but_its_loss_stops_at_the_cap[tensorflow]": "9 s",
    "test_causes_labels_and_rnn.py::test_clip_by_value_keeps_runs_finite_but_learns_on_fewer_seeds_than_clip_by_norm"
    "[tensorflow]": "25.9 s",
    "test_watch_keras_lowlevel.py::test_fit_under_mirrored_strategy_on_two_logical_cpus": "7.5 s",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path
        test = getattr(item, "originalname", item.name)
        if (path.suffix == ".ipynb" or path.name.startswith(SLOW_MODULES)
                or f"{path.name}::{test}" in SLOW_TESTS or f"{path.name}::{item.name}" in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


# What the test modules imported (torch, TensorFlow, Keras, Transformers: about a million objects) is never garbage,
# yet every full collection of the cyclic garbage collector walks it again; frozen after collection, the collector
# walks only what the tests make. Measured on the quick tier (2 workers, 2 cores): collections of 0.4-14 s each,
# 67 s of the workers' 233 s; 135 s -> 108 s wall with the freeze. Reference counting still frees everything, and
# what a test creates is collected as before (the refcounting_only fixture's gc.collect() included).
def pytest_collection_finish(session):
    import gc

    gc.collect()
    gc.freeze()


# pytest-xdist's `--dist loadfile` (`make test`, `make test-quick`: `-n 2`) hands each worker whole files, so a
# module-scoped fixture (a launch, a built site, a subprocess of every case) runs once, and a notebook's cells stay
# in one kernel in order. Two changes to it:
# - the launches of two processes each (torchrun, accelerate launch, Lightning's DDP scripts, the distributed watch)
#   are one unit, run one after another on one worker: two launches side by side would start four ranks on two
#   cores, and `accelerate launch` starts from the fixed port 29500 (another launch's port, taken between its
#   check and its bind, would fail the launch);
# - the reproduction contract goes out a test at a time: its tests share no fixture, and as one file it alone would
#   outlast everything else on the other worker.
LAUNCHES = ("test_watch_torch_distributed.py", "test_host_ddp_")
ONE_TEST_AT_A_TIME = ("test_contract",)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            name = path.rsplit("/", 1)[-1]
            if name.startswith(LAUNCHES):
                return "the launches"
            if name.startswith(ONE_TEST_AT_A_TIME):
                return nodeid
            return path

    return Scheduling(config, log)


# The frameworks as fixtures: a test that asks for one is skipped where it is not installed, and TensorFlow is
# imported the quiet way (nanlab's backend), never at collection time.
@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tf():
    pytest.importorskip("tensorflow")
    from nanlab.frameworks.tensorflow.backend import tf

    return tf


@pytest.fixture(scope="session")
def keras():
    pytest.importorskip("keras")
    from nanlab.frameworks.tensorflow.backend import keras

    return keras


@pytest.fixture
def refcounting_only():
    """The cyclic garbage collector off for the test: what it frees, reference counting alone freed. A test that
    asserts an object is gone after a function returned then fails on a reference cycle, instead of passing whenever
    the collector happened to run."""
    import gc

    gc.collect()
    gc.disable()
    yield
    gc.enable()
