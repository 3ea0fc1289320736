"""`python -m symphony ...`: the same as the `symphony` command."""

from __future__ import annotations

import sys

from symphony.cli import main

sys.exit(main())
