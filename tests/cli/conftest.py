import sys
from pathlib import Path

import pytest
import torch

# the CLI tests share their helpers (tests/cli/cli_helpers.py) as a plain module
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Nothing is cached outside the test's own folder, and tiny models run on one thread
    (extra threads only spin on a busy machine)."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
