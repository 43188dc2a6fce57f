"""Fixtures for the tile-store tests (helpers and the note on exactness: tiles_helpers.py)."""

import pytest
from tiles_helpers import relu_net


@pytest.fixture
def net():
    return relu_net(3)
