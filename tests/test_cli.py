"""The ``plad`` command: overrides in any position, Prefect's home and telemetry, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import build_parser, parse_args, set_prefect_defaults

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [
    ["stage", "calibrate", "--config", "demo", "train.beta=0.5", "sft.lr=2e-5"],
    ["stage", "calibrate", "train.beta=0.5", "--config", "demo", "sft.lr=2e-5"],
    ["stage", "calibrate", "train.beta=0.5", "sft.lr=2e-5", "--config", "demo"],
])
def test_overrides_are_read_before_and_after_options(argv):
    args = parse_args(build_parser(), argv)
    assert (args.name, args.config) == ("calibrate", "demo")
    assert args.overrides == ["train.beta=0.5", "sft.lr=2e-5"]


def test_a_stray_word_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_parser(), ["stage", "calibrate", "--config", "demo", "train.beta"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: train.beta" in capsys.readouterr().err


def test_prefect_home_defaults_to_the_project_state_folder_and_telemetry_off(tmp_path):
    environ: dict[str, str] = {}
    set_prefect_defaults(environ, tmp_path)
    assert environ == {"PREFECT_HOME": str(tmp_path / ".state" / "prefect"),
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def test_a_user_setting_of_prefect_home_or_analytics_wins(tmp_path):
    environ = {"PREFECT_HOME": "/elsewhere", "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}
    set_prefect_defaults(environ, tmp_path)
    assert environ["PREFECT_HOME"] == "/elsewhere" and environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"


def test_a_bad_override_after_the_config_option_is_one_line_naming_the_key():
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "config", "show", "--config", "demo", "train.nope=1"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown config key 'train.nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_takes_repeated_models_the_teacher_and_overrides_anywhere():
    args = parse_args(build_parser(), ["eval", "--data", "mine.jsonl", "--model", "a=./folder", "train.beta=0.5",
                                       "--model", "b=0123456789abcdef", "--teacher", "--rows", "8", "eval.seed=1"])
    assert (args.data, args.model, args.teacher, args.rows) == ("mine.jsonl", ["a=./folder", "b=0123456789abcdef"],
                                                                True, 8)
    assert args.overrides == ["train.beta=0.5", "eval.seed=1"]


def test_eval_without_a_model_is_one_line_naming_the_option(tmp_path, capsys):
    from flows.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--data", str(tmp_path / "x.jsonl")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == \
        "plad: error: plad eval needs at least one --model NAME=SPEC (or --model teacher)"
