"""Typed, strict pipeline configuration.

The schema is a tree of dataclasses turned into an OmegaConf structured config, so an unknown or
mistyped key is an error, never a silent default. Configs are layered:

    schema defaults  <-  conf/base.yaml  <-  conf/<name>.yaml (and what it `extends`)  <-  dotlist overrides

A YAML file may name its parent with a top-level ``extends: <name>``. Overrides are OmegaConf
dotlists (``train.beta=0.5``), the same on the CLI and as Prefect flow parameters.
Every default is justified where it is set, in ``conf/base.yaml``; the schema's defaults equal it
(tests/test_config.py), so a config built in Python runs on the same values.

Values are strict too: a field's metadata holds its ``choices`` (a list field: each element), its
range (``ge``, ``gt``, ``le``, ``lt``; ``exclude``), or a ``pattern`` (regex, description), and
``validate`` checks every one, and every prompt template's fields, when the config loads. Leaves
stay plain ``str``/``int``/``float``, so artifact keys (hashes of ``config_slice``) do not change.
"""

from plad_core.config.checks import template_problem, validate
from plad_core.config.loading import config_slice, load_config
from plad_core.config.schema import (
                                     CONF_DIR,
                                     JUDGE_CANDIDATES,
                                     ApiConfig,
                                     ConfigError,
                                     DataConfig,
                                     EvalConfig,
                                     HealConfig,
                                     JudgeConfig,
                                     LaunchConfig,
                                     OptimConfig,
                                     PairsConfig,
                                     PladConfig,
                                     PromotionConfig,
                                     PromptConfig,
                                     RunnerConfig,
                                     SamplingConfig,
                                     StudentConfig,
                                     StudentSamplingConfig,
                                     TeacherConfig,
                                     TeacherSftConfig,
                                     TrainConfig,
)

__all__ = ["CONF_DIR", "JUDGE_CANDIDATES", "ApiConfig", "ConfigError", "DataConfig", "EvalConfig", "HealConfig",
           "JudgeConfig", "LaunchConfig", "OptimConfig", "PairsConfig", "PladConfig", "PromotionConfig",
           "PromptConfig", "RunnerConfig", "SamplingConfig", "StudentConfig", "StudentSamplingConfig",
           "TeacherConfig", "TeacherSftConfig", "TrainConfig", "config_slice", "load_config", "template_problem", "validate"]
