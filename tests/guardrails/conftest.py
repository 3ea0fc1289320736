"""Fixtures for the guardrail tests (helpers live in ``guardrail_helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from guardrail_helpers import copy_tree, load_checker

# The fixtures directory holds code to read, never to import or collect.
collect_ignore = ["fixtures"]


@pytest.fixture(scope="session")
def checker() -> ModuleType:
    """The database-boundary checker, loaded from scripts/guardrails/db_boundary.py."""
    return load_checker()


@pytest.fixture
def scratch_tree(tmp_path: Path) -> Iterator[Path]:
    """A fresh copy of the repository's src, scripts and configuration."""
    yield copy_tree(tmp_path / "repo")
