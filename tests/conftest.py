"""Shared pytest set-up: the ``browser`` marker (tests that drive JupyterLab in headless Chromium)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (skips without a browser)")
