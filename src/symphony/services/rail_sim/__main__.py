"""``python -m symphony.services.rail_sim``: run the rail simulator as its own process.

Prints ``rail-sim listening on <url>`` to stdout once it accepts requests, so a
parent process can start it with ``--port 0`` and read the URL. Exits 0 on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from symphony.services.rail_sim.server import add_arguments, config_from_args, run_rail_sim


def _announce(url: str) -> None:
    print(f"rail-sim listening on {url}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m symphony.services.rail_sim",
        description="Run the in-memory payment rail simulator.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(run_rail_sim(config, on_ready=_announce))
    return 0


if __name__ == "__main__":
    sys.exit(main())
