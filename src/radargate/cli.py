"""The ``radargate`` command line: thin, parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from radargate import __version__
from radargate.gates import GATES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radargate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"radargate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gates", help="list the registered gates")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gates":
        for name, gate in GATES.items():
            summary = (sys.modules[gate.__module__].__doc__ or "").strip().splitlines()
            print(f"{name:10s} {summary[0] if summary else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
