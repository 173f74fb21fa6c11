"""The command-line rules every ``edge-asd*`` command shares (the runtime's, training's and export's)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from edge_asd.errors import UserError


class CliParser(argparse.ArgumentParser):
    """argparse with the product's rule for user mistakes: one line on stderr, status 2.

    argparse's own habit (the usage block, then the error) is several lines that
    scripts and journals split apart; the usage stays one ``--help`` away.
    """

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    setup: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Parse, run ``setup``, dispatch to ``args.func``; a :class:`UserError` becomes one line and its status."""
    args = parser.parse_args(argv)
    if setup is not None:
        setup(args)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
