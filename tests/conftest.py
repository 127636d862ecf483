"""Shared pytest set-up: TensorFlow's environment before any test imports it, the ``browser`` marker, and the
frameworks as fixtures.

Many test modules import TensorFlow directly, before nanlab's TensorFlow backend (which sets these defaults) would.
Without oneDNN's reordered float sums off, CPU results depend on which module happened to import TensorFlow first
(measured: the TF RNN contract's clip-grad-norm seed 1 spikes late with oneDNN on).
"""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (skips without a browser)")


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
