"""``python -m model <command>``: UniMMAD model tools. Each command lives in model/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

COMMANDS = ["info", "metrics", "train", "adapt", "evaluate"]
USAGE_ERROR = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m model", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"model.commands.{name}")
        command.register(subparsers).set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # user errors (bad values, missing files) are one line
        lines = str(error).strip().splitlines()
        print(f"error: {lines[0] if lines else type(error).__name__}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
