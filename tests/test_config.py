import dataclasses
import importlib
import re
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from plad_core.config import (CONF_DIR, JUDGE_CANDIDATES, ConfigError, PladConfig, config_slice, load_config,
                              template_problem, validate)
from plad_core.data import TASKS


def test_layers_merge_in_order_and_overrides_win(tmp_path):
    # a child over a parent over tldr/base, then the dotlist; values chosen here, not the repo's configs'
    (tmp_path / "parent.yaml").write_text("extends: tldr\nname: parent\ndata:\n  n_unlabeled: 77\n  n_dev: 11\n"
                                          "train:\n  beta: 0.75\n")
    (tmp_path / "child.yaml").write_text(f"extends: {tmp_path / 'parent.yaml'}\nname: child\ndata:\n  n_dev: 13\n")
    base = OmegaConf.load(CONF_DIR / "base.yaml")
    cfg = load_config(str(tmp_path / "child.yaml"), ["train.beta=0.25"])
    assert cfg.name == "child"                                   # the child wins over its parent
    assert cfg.data.n_dev == 13 and cfg.data.n_unlabeled == 77   # child over parent, parent over base
    assert cfg.data.n_labeled == base.data.n_labeled             # base.yaml, inherited through tldr.yaml
    assert cfg.train.beta == 0.25                                # the dotlist over every file
    assert list(cfg.student.keep_layers) == list(base.student.keep_layers)


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
    with pytest.raises(ReadonlyConfigError):
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


# --- values: choices, ranges and templates, checked when the config loads ------------------------

# Every enumerated setting and its valid values (a schema field with `choices` metadata must be here).
CHOICES = {
    "data.task": ("tldr", "hh"),
    "data.format": ("auto", "jsonl", "parquet"),
    "teacher.sampling.backend": ("auto", "hf", "vllm", "openai"),
    "student.sampling.backend": ("auto", "hf", "vllm"),
    **{f"{side}.sampling.{key}": values for side in ("teacher", "student") for key, values in
       [("dtype", ("auto", "float32", "bfloat16", "float16")), ("compile", ("auto", "true", "false")),
        ("api.mode", ("completions", "chat"))]},
    **{f"{node}.schedule": ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                            "constant_with_warmup", "inverse_sqrt") for node in ("sft", "train.optim", "teacher.sft")},
    "train.loss": ("ranking", "margin", "simpo", "cpo_hinge", "dpo", "ipo", "dpkd", "seqkd", "token_kd"),
    "train.kd_divergence": ("forward_kl", "jsd"),
    "pairs.truncated": ("drop", "keep"),
    "train.pair_forward": ("shared_prefix", "concatenated"),
    "train.best_metric": ("eval_loss", "eval_pair_accuracy", "eval_margin"),
    "train.best_mode": ("min", "max"),
    "train.keep": ("last", "best"),
    "train.launch.strategy": ("ddp", "fsdp"),
    "eval.dtype": ("auto", "float32", "bfloat16", "float16"),
    **{f"{node}.bf16": ("auto", True, False) for node in ("student.heal", "sft", "train.optim", "teacher.sft")},
    "teacher.sft.enabled": ("auto", True, False),
    "eval.systems": ("teacher", "sft", "plad"),
    "eval.judge.backend": ("hf", "openai"),
    "eval.judge.api.mode": ("completions", "chat"),
    "promotion.metric": ("rouge1", "rouge2", "rougeL"),
    "runner.kind": ("local", "dask"),
}


def schema_checks(cls=PladConfig, prefix=""):
    """{path: field metadata} of every checked leaf in the schema."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out.update(schema_checks(type(default), f"{prefix}{f.name}."))
        elif f.metadata:
            out[prefix + f.name] = dict(f.metadata)
    return out


def test_every_enumerated_setting_is_listed_here():
    assert {p: tuple(m["choices"]) for p, m in schema_checks().items() if "choices" in m} == CHOICES


def registry(name, module):
    return getattr(importlib.import_module(module), name)


def test_choices_equal_the_code_registries():
    """The config package sits below the code that consumes each setting, so it holds the names itself; they must
    be the consumers' names."""
    assert CHOICES["train.loss"] == tuple(registry("LOSS_NAMES", "plad_core.losses"))
    assert CHOICES["train.kd_divergence"] == tuple(registry("KD_DIVERGENCES", "plad_core.losses"))
    assert CHOICES["train.pair_forward"] == tuple(registry("PAIR_FORWARDS", "plad_core.training.logprobs"))
    assert CHOICES["train.launch.strategy"] == tuple(registry("STRATEGIES", "plad_core.training.distributed"))
    logps = registry("PairLogps", "plad_core.losses").split(torch.zeros(2), torch.ones(2), {})
    assert set(CHOICES["train.best_metric"]) == {f"eval_{k}" for k in ["loss", *logps.metrics()]}
    assert CHOICES["teacher.sampling.backend"] == tuple(registry("BACKENDS", "plad_core.sampling"))
    assert CHOICES["student.sampling.backend"] == tuple(registry("STUDENT_BACKENDS", "plad_core.stages.sampling"))
    assert CHOICES["teacher.sampling.compile"] == tuple(registry("COMPILE_SETTINGS", "plad_core.sampling.vllm_backend"))
    assert CHOICES["teacher.sampling.dtype"] == ("auto", *registry("DTYPES", "plad_core.models"))
    assert CHOICES["teacher.sampling.api.mode"] == tuple(registry("MODES", "plad_core.sampling.api_settings"))
    assert CHOICES["promotion.metric"] == tuple(registry("ROUGE_TYPES", "plad_core.rouge"))
    assert CHOICES["runner.kind"] == tuple(registry("RUNNER_KINDS", "flows.distill"))
    assert CHOICES["data.task"] == tuple(TASKS)
    assert JUDGE_CANDIDATES == tuple(registry("CANDIDATES", "plad_core.evaluation.judge"))


@pytest.mark.parametrize("name", CHOICES["train.optim.schedule"])
def test_every_schedule_runs_with_the_loop_arguments(name):
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=4)  # as train_loop calls it
    optimizer.step()
    scheduler.step()


@pytest.mark.parametrize("path", sorted(CHOICES))
def test_a_bad_choice_fails_at_load_naming_path_value_and_choices(path):
    is_list = path == "eval.systems"
    override = f"{path}=[sft,bogus]" if is_list else f"{path}=bogus"
    with pytest.raises(ConfigError) as err:
        load_config("tldr", [override])
    message = str(err.value)
    assert (f"{path}[1]='bogus'" if is_list else f"{path}='bogus'") in message
    assert ", ".join(map(str, CHOICES[path])) in message
    assert f"override '{override}'" in message


@pytest.mark.parametrize("override, expected", [
    ("data.n_dev=-1", "data.n_dev=-1 is out of range: must be >= 0"),
    ("teacher.sampling.shard_size=0", "teacher.sampling.shard_size=0 is out of range: must be >= 1"),
    ("student.sampling.batch_size=0", "student.sampling.batch_size=0 is out of range: must be >= 1"),
    ("teacher.sampling.top_p=1.5", "teacher.sampling.top_p=1.5 is out of range: must be > 0 and <= 1"),
    ("teacher.sampling.temperature=-0.1", "teacher.sampling.temperature=-0.1 is out of range: must be >= 0"),
    ("train.optim.lr=0", "train.optim.lr=0.0 is out of range: must be > 0"),
    ("pairs.unlabeled_fraction=0", "pairs.unlabeled_fraction=0.0 is out of range: must be > 0 and <= 1"),
    ("train.eval_every=0", "train.eval_every=0 is out of range: must be >= 1"),
    ("eval.calibration_samples=1", "eval.calibration_samples=1 is out of range: must be >= 0, not 1"),
    ("student.keep_layers=[0,-1]", "student.keep_layers[1]=-1 is out of range: must be >= 0"),
    ("eval.stop=['\\n','']", "eval.stop[1]='' is not a non-empty string"),
    ("device=gpu", "device='gpu' is not auto, cpu, mps, cuda[:N] or xpu[:N]"),
])
def test_a_value_out_of_range_fails_at_load(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("tldr", [override])
    assert f"override '{override}': {expected}" in str(err.value)


@pytest.mark.parametrize("override", ["data.n_dev=0", "eval.calibration_samples=0", "eval.calibration_samples=2",
                                      "teacher.sampling.top_p=1", "teacher.sampling.temperature=0", "device=cuda:1",
                                      "teacher.sampling.compile=true", "student.sampling.compile=False",
                                      "teacher.sampling.dtype=auto", "student.sampling.dtype=auto", "eval.dtype=auto",
                                      "student.heal.bf16=true", "sft.bf16=False", "train.optim.bf16=auto"])
def test_values_at_the_edges_and_auto_dtypes_load(override):
    load_config("tldr", [override])


def test_every_problem_is_listed_with_the_file_that_set_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: demo\ntrain:\n  loss: rank\nrunner:\n  kind: k8s\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad), ["data.n_labeled=-5"])
    message = str(err.value)
    assert f"{bad}: train.loss='rank' is not one of" in message
    assert f"{bad}: runner.kind='k8s' is not one of: local, dask" in message
    assert "override 'data.n_labeled=-5': data.n_labeled=-5" in message


def test_a_template_with_an_unknown_field_fails_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('extends: tldr\nstudent:\n  prompt:\n    template: "POST: {post}\\nBODY: {body}\\nTL;DR:"\n')
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    message = str(err.value)
    assert f"{bad}: student.prompt.template uses unknown field(s) ['body']" in message
    assert "valid fields: id, subreddit, title, post, summary" in message
    assert "teacher.prompt.template" not in message


def test_changing_the_task_alone_fails_on_the_templates_and_judge_prompt():
    with pytest.raises(ConfigError) as err:
        load_config("tldr", ["data.task=hh"])
    message = str(err.value)
    for path in ("teacher.prompt.template", "student.prompt.template", "eval.judge.prompt='judge/tldr.txt'"):
        assert f"{path} uses unknown field(s) ['post', 'subreddit', 'title']; valid fields: id, prompt, chosen" in message
    load_config("tldr", ["data.task=hh", "teacher.prompt.template='{prompt}'", "student.prompt.template='{prompt}'",
                         "eval.judge.enabled=false"])  # an unused judge prompt is not checked


@pytest.mark.parametrize("override, expected", [
    ("teacher.prompt.template='TL;DR of {post'", "teacher.prompt.template is not a valid format template"),
    ("teacher.prompt.template='{0} {post}'", "teacher.prompt.template uses unknown field(s) ['0']"),
    ("eval.judge.prompt=judge/missing.txt", "eval.judge.prompt='judge/missing.txt' is not a file"),
])
def test_broken_templates_and_missing_judge_prompt_fail(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config("tldr", [override])


def test_an_override_that_is_not_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match="quote it"):
        load_config("tldr", ["teacher.prompt.template={post} {title}"])


def test_template_problem_takes_the_fields():
    assert template_problem("{title}: {post!r:>10} {post[0]}", TASKS["tldr"].fields) is None
    assert template_problem("{{literal}} {prompt}", TASKS["hh"].fields) is None
    assert "['title']" in template_problem("{title}", TASKS["hh"].fields)


# --- one source of defaults --------------------------------------------------------------------

def leaves(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def test_schema_defaults_equal_base_yaml():
    """conf/base.yaml states every default with its reason; the dataclasses must hold the same values,
    so code and tests that build a config in Python run on them. Interpolations compare unresolved."""
    schema = leaves(OmegaConf.to_container(OmegaConf.structured(PladConfig), resolve=False))
    merged = leaves(OmegaConf.to_container(load_config("base"), resolve=False))
    diverging = {key: (schema[key], merged[key]) for key in schema if schema[key] != merged[key]}
    assert diverging == {}, "(schema default, conf/base.yaml) of every value that differs"
    # base.yaml states every key but the student's API settings (the student has no openai backend)
    stated = set(leaves(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "base.yaml"))))
    assert set(schema) - stated == {k for k in schema if k.startswith("student.sampling.api.")}


def test_schema_defaults_are_valid():
    validate(OmegaConf.structured(PladConfig))


# --- every shipped config loads ------------------------------------------------------------------

def experiment_runs(path):
    """(config, overrides) for every run an experiment YAML describes, each grid value on its own."""
    exp = OmegaConf.to_container(OmegaConf.load(path))
    base = list(exp.get("overrides", []))
    runs = [(exp["config"], base)]
    runs += [(exp["config"], base + list(system.get("overrides", []))) for system in exp.get("systems", [])]
    runs += [(exp["config"], base + [f"pairs.unlabeled_fraction={f}"]) for f in exp.get("fractions", [])]
    runs += [(exp["config"], base + [f"{key}={value}"])
             for key, values in exp.get("tuning", {}).get("grid", {}).items() for value in values]
    return runs


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF_DIR.glob("*.yaml")))
def test_every_config_loads(name):
    assert load_config(name).name == name


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("experiments/*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_run_config_loads(path):
    for config, overrides in experiment_runs(path):
        load_config(config, overrides)
