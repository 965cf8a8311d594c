"""`python -m batchgen.sim [--port 7860] [--config FILE] [--set KEY=VALUE ...]`."""

from __future__ import annotations

import argparse
import logging

from .config import SimConfig
from .server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batchgen.sim", description=__doc__)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", help="TOML file with simulator options")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one option, repeatable"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = SimConfig.from_file(args.config) if args.config else SimConfig()
        config = config.replace(dict(item.split("=", 1) for item in args.set))
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    serve(args.port, config, host=args.host)


if __name__ == "__main__":
    main()
