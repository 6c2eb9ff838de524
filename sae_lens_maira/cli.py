"""`sae-lens-maira` command line: each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _cmd_version(args: argparse.Namespace) -> int:
    from sae_lens_maira import __version__

    print(__version__)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sae_lens_maira import quickstart

    quickstart.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-maira",
        description="MAIRA-2 + sparse autoencoders: model, SAEs, activations, dashboards, steering.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(handler=_cmd_version)
    p = sub.add_parser("demo", help="run the main job on the built-in small default")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
