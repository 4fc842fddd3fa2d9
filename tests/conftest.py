"""Test-session settings: torch computes on one thread, as `codeslm complete` and `codeslm serve`
do by default, so a test's numerics (and a tiny test model's greedy choices) do not depend on
which tests ran before it and set the process-wide thread count."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    import torch

    torch.set_num_threads(1)
