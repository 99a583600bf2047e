"""Shared test setup.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set here, before the
project modules are imported by the tests: the Triton kernels then run on the CPU interpreter.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
