"""The test-only escape hatch refuses to load outside the test environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _import_with(env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SYMPHONY_ENV"}
    if env_value is not None:
        env["SYMPHONY_ENV"] = env_value
    return subprocess.run(
        [sys.executable, "-c", "import symphony.db.test_only"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("env_value", [None, "production", "development", "TEST", ""])
def test_import_is_refused_outside_tests(env_value: str | None) -> None:
    result = _import_with(env_value)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "SYMPHONY_ENV=test" in result.stderr


def test_import_is_allowed_in_tests() -> None:
    result = _import_with("test")
    assert result.returncode == 0, result.stderr
