"""Root of the test suite: loads the shared fixtures for `tests/` and `src/symphony/db/tests/`."""

from __future__ import annotations

import os

# Before any symphony import: the test-only helpers refuse to load in any other environment.
os.environ["SYMPHONY_ENV"] = "test"

pytest_plugins = ("tests.support.database",)
