import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from plad_core.config import ConfigError, config_slice, load_config


def test_layers_merge_in_order_and_overrides_win():
    cfg = load_config("demo", ["train.beta=0.25"])
    assert cfg.name == "demo"                        # demo.yaml
    assert cfg.data.n_unlabeled == 96                # demo.yaml over base.yaml
    assert cfg.teacher.prompt.fewshot_k == 2         # base.yaml, inherited through tldr.yaml
    assert cfg.train.beta == 0.25                    # dotlist override
    assert cfg.student.keep_layers == [0, 1, 2, 3, 26, 27, 28, 29]


def test_unknown_override_key_names_path_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config("tldr", ["train.betta=0.5"])
    message = str(err.value)
    assert "train.betta" in message
    assert "beta" in message and "loss" in message and "optim" in message


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tldr\nsampling:\n  temperature: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    assert str(bad) in str(err.value)
    assert "'sampling'" in str(err.value) and "teacher" in str(err.value)


def test_mistyped_value_is_an_error():
    with pytest.raises(ConfigError, match="train.beta"):
        load_config("tldr", ["train.beta=high"])


def test_unknown_config_name_lists_known_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_config("no-such-config")


def test_config_is_read_only():
    cfg = load_config("tldr")
    with pytest.raises(Exception):
        cfg.train.beta = 3.0


def test_slice_is_plain_and_resolved():
    cfg = load_config("tldr")
    part = config_slice(cfg, ["train", "data.n_dev"])
    assert part["data.n_dev"] == 256
    assert part["train"]["beta"] == 1.0 and isinstance(part["train"], dict)


def test_cli_config_show_prints_merged_yaml():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "config", "show", "--config", "demo", "train.beta=0.5"],
                         capture_output=True, text=True, check=True).stdout
    shown = OmegaConf.create(out)
    assert shown.train.beta == 0.5 and shown.data.n_dev == 32


def test_cli_reports_config_errors_cleanly():
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "config", "show", "nope.key=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown config key 'nope'" in proc.stderr
