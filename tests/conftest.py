"""Shared test settings: everything offline, on the tiny random Llama built locally, one thread.

One thread per process: the tiny model gains nothing from more, and several test processes (the
subprocess and multi-process tests) that each spin two threads on a 2-core machine slow down thirty-fold.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402 - after the thread settings, which subprocesses inherit

torch.set_num_threads(1)

# The fuzzing harness's checks (outcome, check_tasks) are asserts in a helper module: rewritten like a test
# module's, so that a failing example shows the values that failed.
pytest.register_assert_rewrite("fuzzing")
