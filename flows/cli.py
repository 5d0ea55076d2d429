"""``plad``: run the flow, run one stage, show the config, inspect pairs.

    plad run [--config NAME] [--force STAGE ...] [key=value ...]    the Prefect flow `distill`
    plad scale [--experiment NAME] [key=value ...]                   the data-scale experiment (flow `distill-scale`)
    plad table [--experiment NAME] [--tune] [key=value ...]          the paper's table (flow `distill-table`)
    plad stage NAME [--config NAME] [--force] [key=value ...]       one stage, plain Python
    plad eval --data PATH --model NAME=SPEC ... [--config NAME] [--rows N] [key=value ...]
                                                                     score models on your own data file
    plad config show [--config NAME] [key=value ...]                 the merged config as YAML
    plad pairs show [PATH|latest] [-n 5] [--config NAME]             pairs, readably
    plad history [--config NAME]                                     champion/challenger decisions
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from omegaconf import OmegaConf

from plad_core.artifacts import ArtifactStore
from plad_core.config import ConfigError, load_config
from plad_core.data import DataError
from plad_core.evaluation.judge import JudgeError
from plad_core.models import ModelError, set_threads
from plad_core.registry import Registry, registry_path
from plad_core.sampling.openai_api import ApiError
from plad_core.stages import RUNNERS, run_stage
from plad_core.stages.eval_inputs import parse_model_args
from plad_core.stages.eval_models import run_eval_models


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tldr", help="config name under conf/ or a YAML path (default: tldr)")
    parser.add_argument("overrides", nargs="*", help="OmegaConf dotlist overrides, e.g. train.beta=0.5")


def _add_experiment_args(parser: argparse.ArgumentParser, default: str, example: str) -> None:
    parser.add_argument("--experiment", default=default,
                        help=f"experiment name under conf/experiments/ or a YAML path (default: {default})")
    parser.add_argument("overrides", nargs="*", help=f"dotlist overrides for every run, e.g. {example}")


def _flow(module: str, name: str) -> Callable[..., dict[str, Any]]:
    """The Prefect flow ``name`` of ``flows/<module>.py``: Prefect is imported only by the commands that run one."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "plad")
    return getattr(importlib.import_module(f"flows.{module}"), name)


def cmd_run(args: argparse.Namespace) -> None:
    result = _flow("distill", "distill")(config=args.config, overrides=args.overrides, force=args.force)
    evaluate = Path(result["artifacts"]["evaluate"])
    print(f"\nResults ({result['config']}, dev split):\n")
    print((evaluate / "results.md").read_text())
    if result["promotion"]:
        decision = result["promotion"]
        verdict = "new champion" if decision["promoted"] else "champion kept"
        print(f"Promotion: {verdict} ({decision['reason']}); see `plad history --config {args.config}`")
    print(f"Pairs:   {Path(result['artifacts']['curate_pairs']) / 'pairs.parquet'}")
    print(f"Report:  {evaluate / 'report.html'}")


def _print_experiment(result: dict[str, Any], label: str, file: str) -> None:
    """An experiment flow's summary, then ``label`` with ``file`` of its artifact folder, and the report."""
    folder = Path(result["artifact"])
    print(f"\n{(folder / 'summary.md').read_text()}")
    print(f"{label + ':':<9}{folder / file}")
    print(f"Report:  {folder / 'report.html'}")


def cmd_scale(args: argparse.Namespace) -> None:
    result = _flow("scale", "distill_scale")(experiment=args.experiment, overrides=args.overrides)
    _print_experiment(result, "Plot", "plots/scale.png")


def cmd_table(args: argparse.Namespace) -> None:
    result = _flow("table", "distill_table")(experiment=args.experiment, overrides=args.overrides, tune=args.tune)
    _print_experiment(result, "Numbers", "table.json")


def cmd_stage(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    set_threads(cfg.threads)
    artifact = run_stage(args.name, cfg, ArtifactStore(cfg.artifacts_root),
                         force=frozenset([args.name]) if args.force else frozenset())
    print(f"{args.name}: {artifact.path}")
    print(OmegaConf.to_yaml(OmegaConf.create({"stats": artifact.manifest["stats"]})))


def cmd_eval(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    set_threads(cfg.threads)
    models = parse_model_args([*args.model, *(["teacher"] if args.teacher else [])])
    artifact = run_eval_models(cfg, ArtifactStore(cfg.artifacts_root), args.data, models, args.rows, args.force)
    print(f"\nResults ({cfg.name}, {args.data}):\n")
    print(artifact.file("results.md").read_text())
    print(f"Outputs: {artifact.file('generations.parquet')}")
    print(f"Report:  {artifact.file('report.html')}")


def cmd_config_show(args: argparse.Namespace) -> None:
    print(OmegaConf.to_yaml(load_config(args.config, args.overrides)), end="")


def cmd_pairs_show(args: argparse.Namespace) -> None:
    if args.path == "latest":
        store = ArtifactStore(load_config(args.config).artifacts_root)
        latest = store.latest("curate_pairs")  # the pairs training reads; build_pairs' own: pass its folder
        if latest is None:
            raise SystemExit(f"no pairs under {store.root / 'curate_pairs'}; run `plad run` or `plad stage curate_pairs`")
        path = latest.file("pairs.parquet")
    else:
        path = Path(args.path)
        path = path / "pairs.parquet" if path.is_dir() else path
    frame = pd.read_parquet(path)
    print(f"{path}: {len(frame)} pairs\n")
    for row in frame.head(args.n).to_dict("records"):
        prompt_tail = row["prompt"][-args.prompt_chars:].replace("\n", " ")
        print(f"── {row['id']} (sample {row['sample_index']}) ──")
        print(textwrap.fill(f"prompt: …{prompt_tail}", 100, subsequent_indent="        "))
        print(textwrap.fill(f"chosen   ({row['chosen_tokens']} tok, teacher): {row['chosen']}", 100,
                            subsequent_indent="        "))
        print(textwrap.fill(f"rejected ({row['rejected_tokens']} tok, student): {row['rejected']}", 100,
                            subsequent_indent="        "))
        if row.get("reason"):  # dropped.parquet of curate_pairs
            print(f"dropped: {row['reason']}")
        if row.get("reference"):
            print(textwrap.fill(f"reference: {row['reference']}", 100, subsequent_indent="        "))
        print()


def cmd_history(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    path = registry_path(cfg, Path(cfg.artifacts_root))
    if not path.is_file():
        raise SystemExit(f"no registry at {path} yet: it is written after the first `plad run`")
    frame = Registry(path).history()
    frame["recorded_at"] = pd.to_datetime(frame["recorded_at"], unit="s").dt.strftime("%Y-%m-%d %H:%M")
    frame["promoted"] = frame["promoted"].map({1: "yes", 0: "no"})
    columns = ["id", "recorded_at", "config", "run_id", "metric", "challenger_score", "champion_score", "promoted",
               "reason", "calibrate_key", "data_key", "teacher_key"]
    with pd.option_context("display.max_colwidth", 80, "display.width", 250):
        print(frame[columns].to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the distill flow (Prefect)")
    _add_config_args(run)
    run.add_argument("--force", nargs="*", default=[], metavar="STAGE", help="stages to rebuild")
    run.set_defaults(func=cmd_run)

    scale = commands.add_parser("scale", help="the data-scale experiment: the flow over shares of the unlabeled split")
    _add_experiment_args(scale, "data_scale", "train.beta=0.5")
    scale.set_defaults(func=cmd_scale)

    table = commands.add_parser("table", help="the paper's table: SFT, SeqKD, token KD, DPKD and PLaD over seeds")
    _add_experiment_args(table, "tldr_table", "eval.judge.enabled=false")
    table.add_argument("--tune", action="store_true",
                       help="run the experiment's tuning grid instead, scored on a labeled slice outside every split")
    table.set_defaults(func=cmd_table)

    stage = commands.add_parser("stage", help="run one stage (and any missing upstream), without Prefect")
    stage.add_argument("name", choices=list(RUNNERS))
    _add_config_args(stage)
    stage.add_argument("--force", action="store_true", help="rebuild this stage even if its artifact exists")
    stage.set_defaults(func=cmd_stage)

    evaluate = commands.add_parser(
        "eval", help="score models (artifact keys, champion, folders, hub ids) on a data file, without training")
    _add_config_args(evaluate)
    evaluate.add_argument("--data", required=True,
                          help="JSONL or Parquet file of the config's task schema; every row is scored")
    evaluate.add_argument("--model", action="append", default=[], metavar="NAME=SPEC",
                          help="a model to score: SPEC is an artifact key ([stage/]KEY), champion, a local folder "
                               "or a hub id; 'teacher' alone is the configured teacher (repeatable)")
    evaluate.add_argument("--teacher", action="store_true", help="also score the configured teacher")
    evaluate.add_argument("--rows", type=int, default=0, help="score only the file's first N rows (default: all)")
    evaluate.add_argument("--force", action="store_true", help="rebuild the eval artifact and re-judge")
    evaluate.set_defaults(func=cmd_eval)

    config = commands.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="action", required=True)
    show = config_sub.add_parser("show", help="print the merged config")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)

    pairs = commands.add_parser("pairs", help="pseudo-preference pairs")
    pairs_sub = pairs.add_subparsers(dest="action", required=True)
    pshow = pairs_sub.add_parser("show", help="print pairs readably")
    pshow.add_argument("path", nargs="?", default="latest", help="pairs.parquet (or dropped.parquet), its artifact folder, or "
                       "'latest' (curate_pairs' curated pairs; build_pairs' uncurated ones: pass its folder)")
    pshow.add_argument("-n", type=int, default=5, help="how many pairs (default 5)")
    pshow.add_argument("--config", default="tldr", help="config whose artifacts_root holds 'latest'")
    pshow.add_argument("--prompt-chars", type=int, default=200, help="characters of prompt to show (its end)")
    pshow.set_defaults(func=cmd_pairs_show)

    history = commands.add_parser("history", help="champion/challenger decisions from the registry")
    _add_config_args(history)
    history.set_defaults(func=cmd_history)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with dotlist overrides allowed anywhere, e.g. after ``--config demo``.

    argparse hands a ``nargs="*"`` positional only the words before the first option, so any
    ``key=value`` word after an option comes back unrecognised; those are the overrides too.
    """
    args, extra = parser.parse_known_args(argv)
    stray = [word for word in extra if word.startswith("-") or "=" not in word]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def set_prefect_defaults(environ: dict[str, str] | None = None, project: Path | None = None) -> None:
    """Prefect's home under the project's ``.state/prefect`` and its telemetry off, unless already set.

    Without this, a ``plad`` run outside ``make`` writes its database into ``~/.prefect`` and sends
    Prefect's usage analytics.
    """
    environ = os.environ if environ is None else environ
    project = Path.cwd() if project is None else project
    environ.setdefault("PREFECT_HOME", str((project / ".state" / "prefect").resolve()))
    environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    environ.setdefault("DO_NOT_TRACK", "1")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    set_prefect_defaults()
    args = parse_args(build_parser(), argv)
    try:
        args.func(args)
    except (ConfigError, DataError, ModelError, JudgeError, ApiError) as err:
        print(f"plad: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
