"""Shared pytest set-up: TensorFlow's environment before any test imports it, and the ``browser`` marker.

Many test modules import TensorFlow directly, before nanlab's TensorFlow backend (which sets these defaults) would.
Without oneDNN's reordered float sums off, CPU results depend on which module happened to import TensorFlow first
(measured: the TF RNN contract's clip-grad-norm seed 1 spikes late with oneDNN on).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (skips without a browser)")
