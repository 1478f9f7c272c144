"""Fixtures shared by several test files, and the test tiers.

Every test is marked ``core`` (the backbone, converters, accelerator, export: needs torch and
the test references transformers/timm) or ``frameworks`` (Detectron2, MMSegmentation,
MMDetection, the transformers adapter, the installed stack). ``pytest -m core`` runs the core
tier without collecting the framework files at all, so it works where the framework stacks are
not installed; the whole suite (what CI runs) needs them and fails loudly without them.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from convnext_backbone.accel import fused

FRAMEWORK_PREFIXES = ("test_detectron2_", "test_mmseg_", "test_mmdet_")
FRAMEWORK_FILES = {"test_adapter_contract.py", "test_benchmarks.py", "test_doctor.py", "test_stack.py",
                   "test_transformers_adapter.py"}


def needs_frameworks(path: Path) -> bool:
    return path.name.startswith(FRAMEWORK_PREFIXES) or path.name in FRAMEWORK_FILES


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m core``: the framework files are not even imported (their imports need the stacks)."""
    if config.getoption("markexpr", "").strip() == "core" and needs_frameworks(collection_path):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    """The Ctrl-C tests send SIGINT to the commands they start, as a terminal does. A suite started
    in the background of a non-interactive shell (`make test &`, nohup) inherits SIGINT ignored,
    and so would every child: Python then installs no KeyboardInterrupt handler and the signal is
    lost. Give the children the disposition a terminal user's commands have."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker("frameworks" if needs_frameworks(item.path) else "core")


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
