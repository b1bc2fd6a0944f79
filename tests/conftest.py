"""Shared test fixtures. Every asset is made here; nothing needs the network."""

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def shared_data(name: str) -> Path:
    """Path to ../shared/data/NAME, or skip the test with a reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real speech lives only beside the project checkout)")
    return path
