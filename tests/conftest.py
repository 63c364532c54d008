"""Shared pytest configuration."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# Two cores on CI: keep each test process to one intra-op thread so parallel
# subprocess tests (torchrun, DataLoader workers) do not oversubscribe the machine.
torch.set_num_threads(int(os.environ.get("LUMBARSSL_TEST_THREADS", "1")))

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
