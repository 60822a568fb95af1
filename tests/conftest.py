"""Shared fixtures: small models for the pipeline tests, written as a user's package would be."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: see the note in polyexport/parity.py

import pytest
import torch

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "userpkg"))  # `usernets` plays the user's own package
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Inputs from torch's global generator: seeded before every test, so each sees the same data whatever ran
    before it in its worker."""
    torch.manual_seed(0)


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "out")
