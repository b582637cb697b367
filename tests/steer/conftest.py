import sys
from pathlib import Path

import pytest
import torch

# the steering tests share their helpers (tests/steer/steer_helpers.py) as a plain module
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _one_thread(request, tmp_path, monkeypatch):
    """Tiny models are all per-op overhead; extra threads only spin when the machine is busy.

    Nothing is cached outside the test's own folder (real-model tests read the real cache).
    """
    if request.node.get_closest_marker("real"):
        yield
        return
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
