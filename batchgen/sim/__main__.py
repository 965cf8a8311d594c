"""`python -m batchgen.sim [--port 7860] [--config FILE] [--set KEY=VALUE ...] [--speed 2 ...]`."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import SimConfig, knobs
from .server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m batchgen.sim", description=__doc__)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", help="TOML file with simulator options")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one option, repeatable"
    )
    for name, default, text in knobs():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, metavar="VALUE", help=f"{text} [default: {default}]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    given = dict(item.split("=", 1) for item in args.set if "=" in item)
    given.update(
        {name: getattr(args, name) for name, *_ in knobs() if getattr(args, name) is not None}
    )
    try:
        config = SimConfig.from_file(args.config) if args.config else SimConfig()
        config = config.replace(given)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    try:
        serve(args.port, config, host=args.host)
    except OSError as error:
        sys.exit(f"error: {error.strerror or error}")


if __name__ == "__main__":
    main()
