"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from convnext_backbone.accel import fused


@pytest.fixture
def spy(monkeypatch):
    """Counts of the accelerator's fast paths actually taken."""
    calls = {"block": 0, "downsample": 0}
    real_block, real_down = fused.block_forward, fused.downsample_forward

    def block(b, x):
        calls["block"] += 1
        return real_block(b, x)

    def down(m, x):
        calls["downsample"] += 1
        return real_down(m, x)

    monkeypatch.setattr(fused, "block_forward", block)
    monkeypatch.setattr(fused, "downsample_forward", down)
    return calls
