import os

import pytest
import torch

# Two cores: keep the test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    torch.manual_seed(0)
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture
def commit_each_video(monkeypatch):
    """Write every finished video at once (as before commits were grouped): for tests that use
    a "commit" event as a point in the middle of a run."""
    from c3dfeat.pipeline import assemble

    monkeypatch.setattr(assemble, "COMMIT_SECONDS", 0.0)
