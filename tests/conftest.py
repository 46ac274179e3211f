import os

import pytest
import torch
from streamlit.testing.v1 import AppTest
from helpers import ROOT, SAMPLES

from cam_core import load_backbone, load_image

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s; run in CI, skip with -m 'not slow'")
    config.addinivalue_line("markers", "browser: drives the served app in headless Chromium")


@pytest.fixture(scope="session", autouse=True)
def bank_cache(tmp_path_factory):
    """Dataset banks and generated data (cam_core.banks) go to a temporary folder, never the
    user's cache."""
    folder = tmp_path_factory.mktemp("cam_explorer_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAM_EXPLORER_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def lite0():
    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def resnet18():
    return load_backbone("random:resnet18")


@pytest.fixture(scope="session")
def deit():
    return load_backbone("random:deit_tiny_patch16_224")


@pytest.fixture(scope="session")
def cat():
    return load_image(SAMPLES / "cat.png")


@pytest.fixture(scope="session")
def dog():
    return load_image(SAMPLES / "dog.jpg")


@pytest.fixture
def app():
    """The app, run once from app.py (the page tests' starting point)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at
