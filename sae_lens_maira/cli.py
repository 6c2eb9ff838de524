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


def _experiment(args: argparse.Namespace):
    from sae_lens_maira.experiment import Experiment, parse_override

    return Experiment.from_yaml(args.config, dict(parse_override(o) for o in args.set or []))


def _cmd_cache(args: argparse.Namespace) -> int:
    from sae_lens_maira.activations.cache import CacheConfig, cache_activations
    from sae_lens_maira.activations.distributed import distributed_context

    exp = _experiment(args)
    spec = exp.section("cache")
    spec["output_dir"] = str(exp.path(spec.get("output_dir") or "activations"))
    cfg = CacheConfig(**spec)
    with distributed_context(exp.device()) as (rank, world_size, device):
        model = exp.load_model(device)
        result = cache_activations(
            model, exp.load_processor(), exp.load_studies(), cfg, rank=rank, world_size=world_size
        )
    if result is not None:
        print(
            f"cached {result.n_rows} rows x {cfg.context_size} positions from {result.n_studies} studies "
            f"into {result.path}"
            + (f"; skipped {len(result.skipped)} studies" if result.skipped else "")
        )
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value"
    )


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
    p = sub.add_parser("cache", help="cache selected activations of studies (works under torchrun)")
    _add_config_args(p)
    p.set_defaults(handler=_cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
