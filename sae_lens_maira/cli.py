"""`sae-lens-maira` command line: each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _cmd_version(args: argparse.Namespace) -> int:
    from sae_lens_maira import __version__

    print(__version__)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from sae_lens_maira import quickstart

    quickstart.run()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sae_lens_maira.demo.pipeline import demo_verdict, run_demo

    summary = run_demo(args.out, cache_dir=args.cache_dir)
    passed, reason = demo_verdict(summary)
    if not passed:
        print(f"\ndemo FAILED: {reason} (report card: {summary})", file=sys.stderr)
        return 1
    print(f"\ndone, every target met: {summary}")
    return 0


def _experiment(args: argparse.Namespace):
    from sae_lens_maira.experiment import Experiment, parse_override

    return Experiment.from_yaml(args.config, dict(parse_override(o) for o in args.set or []))


def _cmd_cache(args: argparse.Namespace) -> int:
    from sae_lens_maira.activations.commands import cache_from_experiment

    result = cache_from_experiment(_experiment(args))
    if result is not None:
        done = "already held" if result.reused else "cached"
        line = f"{done} {result.n_rows} rows from {result.n_studies} studies {'in' if result.reused else 'into'} {result.path}"
        if result.reused:
            line += " (same inputs, nothing to do; cache.overwrite: true rebuilds it)"
        if result.dropped_tail_positions:
            line += f"; {result.dropped_tail_positions} selected positions short of a last full row left out"
        print(line)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from sae_lens_maira.training.commands import train_sae

    result = train_sae(_experiment(args), resume=args.resume, overwrite=args.overwrite)
    summary = ", ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in sorted(result.metrics.items())
                        if k.split("/")[-1] in ("explained_variance", "l0", "ce_loss_score", "kl_div_score",
                                                "dead_latents_fraction"))  # fmt: skip
    where = ""
    if result.positions:
        where = (f" (evals on {result.positions['sparsity_variance_positions']} positions of the "
                 f"{result.positions['selection']!s} selection)")  # fmt: skip
    print(f"SAE saved to {result.output_path}; {summary}{where}")
    print(result.wandb.describe() if result.wandb else "")
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    from sae_lens_maira.steering.commands import steer

    feats = _numbers("--features", args.features, int) if args.features else None
    coefs = _numbers("--coefficients", args.coefficients, float) if args.coefficients else None
    result, out = steer(_experiment(args), feats, args.finding, coefs, args.out)
    for coef, rate in result.mention_rate():
        print(f"coefficient {coef:g}: {rate:.0%} of reports mention {result.finding}")
    print(f"reports, rates and plot in {out}")
    return 0


def _numbers(flag: str, text: str, kind: type) -> list:
    """``1,2,4`` as numbers; a bad item names the flag instead of int()'s bare message."""
    try:
        return [kind(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(
            f"{flag} takes comma-separated {'integers' if kind is int else 'numbers'}, "
            f"e.g. {'3,17' if kind is int else '0,2,4'}; got {text!r}"
        ) from None


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value"
    )


def _cmd_dashboards(args: argparse.Namespace) -> int:
    from sae_lens_maira.dashboards import commands

    if args.action == "export":
        for path in commands.export(args.stats, args.out, args.format, args.explanations,
                                    args.features, args.private, args.batch_size,
                                    args.n_layers, args.d_model, args.creator_id,
                                    args.explanation_method, args.explanation_model):  # fmt: skip
            print(path)
    elif args.action == "viewer":
        print(commands.viewer(args.stats, args.out, args.explanations, args.features, args.private,
                              args.saedashboard))  # fmt: skip
    elif args.action == "upload":
        rep = commands.upload(args.export, args.dry_run, args.base_url, args.api_key_env,
                              args.batch_size, args.explanation_method, args.explanation_model,
                              not args.no_explanations, args.user_id, args.max_mb)  # fmt: skip
        if not args.dry_run:
            print(f"{rep.features_sent} features sent in {rep.batches_sent} batches "
                  f"({rep.features_already} accepted by an earlier run; {rep.requests} requests)")  # fmt: skip
    elif args.action == "collect":
        print(commands.collect(_experiment(args), args.out))
    elif args.action == "synthetic":
        print(commands.synthetic_stats(args.out, args.n_studies, args.d_sae, args.seed))
    return 0


def _cmd_autointerp(args: argparse.Namespace) -> int:
    from sae_lens_maira.autointerp.commands import autointerp

    res = autointerp(args.stats, args.out, args.backend, args.model, args.base_url, args.api_key_env,
                     args.cache, args.features, args.concurrency, args.private, args.n_explain, args.min_held_out)  # fmt: skip
    scores = [e.score for e in res.values() if e.score is not None]
    mean = sum(scores) / len(scores) if scores else float("nan")
    print(
        f"{len(res)} features explained in {args.out}; mean detection balanced accuracy {mean:.3f} "
        f"over {len(scores)} scored ({len(res) - len(scores)} not scored: too few held-out examples)"
    )
    return 0


def _add_dashboards(sub) -> None:
    p = sub.add_parser(
        "dashboards", help="export, view and upload feature dashboards from saved statistics"
    )
    acts = p.add_subparsers(dest="action", required=True)
    for name, helptext in (("export", "write the Neuronpedia export and/or SAE-Dashboard batch files"),
                           ("viewer", "write the offline HTML viewer")):  # fmt: skip
        q = acts.add_parser(name, help=helptext)
        q.add_argument("--stats", required=name == "export",
                       help="folder written by the statistics pass")  # fmt: skip
        if name == "viewer":
            q.add_argument("--saedashboard", help="draw the pages from an SAE-Dashboard export "
                           "folder (batch-<i>.json + extras-<i>.json) instead of --stats")  # fmt: skip
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--explanations", help="JSONL written by `sae-lens-maira autointerp`")
        q.add_argument("--features", help="feature list, e.g. 0,3,10-19 (default: all that fire)")
        q.add_argument(
            "--private",
            action="store_true",
            help="drop study text, study ids and X-ray images (e.g. for MIMIC-CXR)",
        )
        if name == "export":
            q.add_argument(
                "--format", default="both", choices=("neuronpedia", "saedashboard", "both")
            )
            q.add_argument("--batch-size", type=int, default=128)
            q.add_argument(
                "--n-layers", type=int, default=None,
                help="the model's layer count (model row; default: what `collect` recorded)",
            )
            q.add_argument("--d-model", type=int, default=None,
                           help="the model's width (default: what `collect` recorded)")  # fmt: skip
            q.add_argument("--creator-id", help="Neuronpedia user id written as creatorId/authorId "
                           "(default clkht01d40000jv08hvalcvly, the seeded user Neuronpedia's own "
                           "exports use)")  # fmt: skip
            q.add_argument("--explanation-method", help="registered Neuronpedia explanation type "
                           "(default np_max-act-logits)")  # fmt: skip
            q.add_argument("--explanation-model", help="registered Neuronpedia explanation model "
                           "that wrote the explanations (default: each explanation's explainer)")  # fmt: skip
        q.set_defaults(handler=_cmd_dashboards)
    q = acts.add_parser("upload", help="post a Neuronpedia export through Neuronpedia's API")
    q.add_argument("--export", required=True, help="folder exports/<model>/<layer>-<set>/")
    q.add_argument("--dry-run", action="store_true",
                   help="check every request against Neuronpedia's route rules and print them with "
                   "their sizes; send nothing")  # fmt: skip
    q.add_argument("--base-url", help="API base (default https://www.neuronpedia.org/api)")
    q.add_argument("--api-key-env", default="NEURONPEDIA_API_KEY")
    q.add_argument("--batch-size", type=int, default=128, help="features per request (at most 128)")
    q.add_argument("--max-mb", type=float, default=4.0,
                   help="largest request body in MB (the server refuses over 4.5)")  # fmt: skip
    q.add_argument("--explanation-method", help="registered Neuronpedia explanation type "
                   "(default: the export's, np_max-act-logits)")  # fmt: skip
    q.add_argument("--explanation-model", help="registered Neuronpedia explanation model that "
                   "wrote the explanations (default: the export's)")  # fmt: skip
    q.add_argument("--no-explanations", action="store_true", help="keep explanations local")
    q.add_argument("--user-id", help="your Neuronpedia user id: accept a model / source set you "
                   "created before from elsewhere")  # fmt: skip
    q.set_defaults(handler=_cmd_dashboards)
    q = acts.add_parser(
        "collect", help="run the model and the trained SAE over studies; save the statistics"
    )
    _add_config_args(q)
    q.add_argument("--out", help="statistics folder (default: dashboards.out of the config)")
    q.set_defaults(handler=_cmd_dashboards)
    q = acts.add_parser("synthetic", help="statistics of synthetic prompts with planted features")
    q.add_argument("--out", required=True)
    q.add_argument("--n-studies", type=int, default=256)
    q.add_argument("--d-sae", type=int, default=64)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(handler=_cmd_dashboards)


def _add_autointerp(sub) -> None:
    p = sub.add_parser(
        "autointerp", help="explain features and score the explanations by detection"
    )
    p.add_argument("--stats", required=True, help="folder written by the statistics pass")
    p.add_argument("--out", required=True, help="explanations JSONL (appended; a rerun resumes)")
    p.add_argument(
        "--backend",
        default="offline",
        choices=("offline", "openai"),
        help="offline: deterministic, no LLM; openai: any OpenAI-compatible endpoint",
    )
    p.add_argument("--model", help="chat model name (openai backend)")
    p.add_argument("--base-url", default="https://api.openai.com/v1")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key"
    )
    p.add_argument("--cache", help="response cache JSONL (default: next to --out)")
    p.add_argument("--features", help="feature list, e.g. 0,3,10-19 (default: all that fire)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--n-explain", type=int, default=40, help="top examples shown to the explainer")
    p.add_argument("--min-held-out", type=int, default=5,
                   help="held-out activating and non-activating examples a feature needs to be scored")
    p.add_argument("--private", action="store_true", help="send no study text to the LLM")
    p.set_defaults(handler=_cmd_autointerp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-maira",
        description="MAIRA-2 + sparse autoencoders: model, SAEs, activations, dashboards, steering.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an error (anywhere on the line; or set {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(handler=_cmd_version)
    p = sub.add_parser(
        "demo", help="the study end to end on the built-in small default (Open-I reports)"
    )
    p.add_argument(
        "--out", default="outputs/demo", help="output folder (summary.md and everything it links)"
    )
    p.add_argument(
        "--cache-dir",
        help="downloads, rendered images and the trained model (default ~/.cache/sae-lens-maira)",
    )
    p.set_defaults(handler=_cmd_demo)
    p = sub.add_parser(
        "quickstart", help="a few-second look at HookedMaira2's hooks on a random small model"
    )
    p.set_defaults(handler=_cmd_quickstart)
    p = sub.add_parser("cache", help="cache selected activations of studies (works under torchrun)")
    _add_config_args(p)
    p.set_defaults(handler=_cmd_cache)
    p = sub.add_parser(
        "train", help="train an SAE with SAELens's runner (from the activation cache)"
    )
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="train again over a finished SAE in train.output_dir (it is replaced)")  # fmt: skip
    p.set_defaults(handler=_cmd_train)
    p = sub.add_parser(
        "steer", help="steer report generation with SAE features and label the reports"
    )
    _add_config_args(p)
    p.add_argument("--features", help="comma-separated feature indices (default: steer.features)")
    p.add_argument(
        "--finding", help="finding to label, e.g. pleural_effusion (default: steer.finding)"
    )
    p.add_argument(
        "--coefficients", help="comma-separated coefficients (default: steer.coefficients)"
    )
    p.add_argument("--out", help="output folder (default: steer.out)")
    p.set_defaults(handler=_cmd_steer)

    _add_dashboards(sub)
    _add_autointerp(sub)
    return parser


DEBUG_ENV = "SAE_LENS_MAIRA_DEBUG"
#: Errors the package raises for bad configs, inputs and files: shown as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, LookupError, RuntimeError)


#: libgomp's setting for what idle OpenMP threads do between parallel regions
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def calm_idle_threads() -> None:
    """Let idle OpenMP threads sleep rather than spin (a user's own setting wins).

    libgomp's default spins for a while after every parallel region; on a busy machine the
    spinning threads take the cores the working ones need, and a 2-thread run of the small
    model's training steps ran 10-20x slower beside other work (benchmarks/omp_wait_policy.py).
    The policy changes only scheduling, never results. It is read once, when torch loads, so
    it is set here, before any subcommand imports torch.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Errors print one ``error: ...`` line and exit 1 (``--debug`` or
    ``SAE_LENS_MAIRA_DEBUG=1`` shows the traceback instead); Ctrl-C exits 130."""
    calm_idle_threads()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    if debug:
        return handler(args)
    try:
        return handler(args)
    except KeyboardInterrupt as err:
        hint = one_line(err) if str(err) else "rerun the same command to resume where it can"
        print(f"error: interrupted; {hint}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
    except (
        Exception
    ) as err:  # a bug rather than a bad input: still one line, with the way to see more
        print(
            f"error: internal error ({type(err).__name__}: {one_line(err)}); rerun with --debug "
            f"(or {DEBUG_ENV}=1) for the traceback and report it",
            file=sys.stderr,
        )
    return 1


def one_line(err: BaseException) -> str:
    """The error's message on one line; a bare KeyError's key gets its class name."""
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) or not text:
        text = f"{type(err).__name__}: {text or 'no message'}"
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
