"""Shared test setup.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set here, before the
project modules are imported by the tests: without CUDA the Triton kernels then run on the CPU interpreter;
with CUDA (`pytest -m cuda` on a GPU) they compile for real.
"""
import os
import sys

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported, which reads it once

import torch  # noqa: E402  (before the project modules: it decides how Triton runs)

os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models run fastest so, and the other core stays free."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
