"""Serve the ``distill`` flow as the deployments ``distill/tldr`` and ``distill/hh``, re-distilled nightly.

    python -m flows.deploy [--cron "0 3 * * *"] [--timezone UTC] [--default-overrides '["train.beta=0.5"]']

registers both deployments with the Prefect API at ``PREFECT_API_URL`` (``make serve`` starts a local
server and this process) and stays in the foreground as their runner: it executes every run that is
triggered (``prefect deployment run distill/tldr``, the UI) or comes due on the schedule, each in its
own subprocess. Without a runner, triggered runs wait in Scheduled. Stopping it (SIGTERM, Ctrl-C)
pauses the schedules; starting it again re-applies the deployments and resumes them.

The cron is evaluated in ``--timezone`` (UTC unless told otherwise), so a nightly run does not move
with the server's local time or daylight saving. ``PLAD_DEPLOY_CRON`` and ``PLAD_DEPLOY_TIMEZONE``
set the defaults of ``--cron`` and ``--timezone``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional

DEFAULT_CRON = "0 3 * * *"  # 03:00 every night
DEFAULT_TIMEZONE = "UTC"
# Seconds between the runner's queries for runs to start (Prefect's PREFECT_RUNNER_POLL_FREQUENCY,
# default 10): a triggered run starts within this many seconds.
DEFAULT_POLL_SECONDS = 2
# Deployment name -> default config name (conf/<config>.yaml).
DEPLOYMENTS = {"tldr": "tldr", "hh": "hh"}


def build_deployments(cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE,
                      overrides: Optional[list[str]] = None, configs: Optional[dict[str, str]] = None) -> list:
    """The RunnerDeployments ``distill/<name>`` for ``configs`` (deployment name -> config name).

    Each runs ``distill(config=<config>, overrides=<overrides>)`` on ``cron`` in ``timezone``; a
    triggered run may replace either parameter (``-p 'overrides=["train.beta=0.5"]'``). The config
    is not loaded here: a config added later (conf/hh.yaml) needs no change to this file.
    """
    from prefect.schedules import Cron
    from prefect.types.entrypoint import EntrypointType

    from flows.distill import distill

    deployments = []
    for name, config in (configs or DEPLOYMENTS).items():
        deployments.append(distill.to_deployment(
            name=name,
            # An explicit timezone: Prefect would otherwise leave the cron's zone unset.
            schedules=[Cron(cron, timezone=timezone)],
            parameters={"config": config, "overrides": list(overrides or [])},
            description=f"PLaD distillation with conf/{config}.yaml, re-run on `{cron}` ({timezone}).",
            tags=["plad", "nightly"],
            # The runner's subprocess imports `flows.distill` (an installed package), whatever its
            # working directory; relative paths in the config (data/artifacts) resolve against the
            # runner's working directory, the checkout for `make serve`.
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    return deployments


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError('expected a JSON list of strings, e.g. \'["train.beta=0.5"]\'')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cron", default=os.environ.get("PLAD_DEPLOY_CRON", DEFAULT_CRON),
                        help=f"nightly schedule, cron syntax (default: $PLAD_DEPLOY_CRON or {DEFAULT_CRON!r})")
    parser.add_argument("--timezone", default=os.environ.get("PLAD_DEPLOY_TIMEZONE", DEFAULT_TIMEZONE),
                        help="IANA zone the cron is evaluated in (default: $PLAD_DEPLOY_TIMEZONE or UTC)")
    parser.add_argument("--default-overrides", type=_json_list, default=[], metavar="JSON",
                        help="JSON list of dotlist overrides, the deployments' default `overrides` parameter")
    parser.add_argument("--config-tldr", default="tldr", help="config of distill/tldr (default: tldr)")
    parser.add_argument("--config-hh", default="hh", help="config of distill/hh (default: hh)")
    parser.add_argument("--poll-seconds", type=int,
                        default=int(os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", DEFAULT_POLL_SECONDS)),
                        help="seconds between the runner's queries for due runs "
                             f"(default: $PREFECT_RUNNER_POLL_FREQUENCY or {DEFAULT_POLL_SECONDS})")
    parser.add_argument("--limit", type=int, default=None,
                        help="most flow runs executed at once (default: no limit)")
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.poll_seconds < 1:
        parser.error("--poll-seconds must be at least 1")
    # The flow-run subprocesses inherit the environment: plad's own log records go to the Prefect API
    # too, as with `plad run` (at the `plad` logger's effective level: WARNING in a runner's
    # subprocess, which configures no root level of its own).
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "plad")
    try:
        deployments = build_deployments(args.cron, args.timezone, args.default_overrides,
                                        {"tldr": args.config_tldr, "hh": args.config_hh})
    except ValueError as err:  # an invalid cron or timezone
        parser.error(str(err))

    from prefect import serve

    # Runner(query_seconds=...) sets the poll interval of this runner (PREFECT_RUNNER_POLL_FREQUENCY
    # is its default); `serve` passes extra keyword arguments to the Runner.
    serve(*deployments, limit=args.limit, query_seconds=args.poll_seconds)  # limit None: no limit


if __name__ == "__main__":
    main()
