"""The sft_teacher stage on a tiny real model and real TL;DR rows: the held-out rows it keeps out,
the step it keeps (lowest held-out NLL, recomputed here by hand), the zero-shot prompt the tuned
teacher is sampled with, and the keys: the sft_teacher key downstream when on, today's keys when off."""

import hashlib

import pandas as pd
import pytest
import torch
from tiny import make_tiny_model, real_tokenizer, tiny_overrides

from plad_core.artifacts import ArtifactStore
from plad_core.config import ConfigError, load_config
from plad_core.data import build_prompts, task_spec
from plad_core.models import MODEL_DIR, load_model
from plad_core.stages import (
    run_prepare_data,
    run_sample_teacher,
    run_sft_teacher,
    run_stage,
)
from plad_core.stages import sampling as stage_sampling
from plad_core.stages.evaluate import dev_teacher_identity
from plad_core.stages.inputs import read_split
from plad_core.stages.keys import (
    keyed_slice,
    sampling_slice,
    stage_key,
    teacher_identity,
)
from plad_core.stages.teacher import (
    local_teacher,
    repeated_trigram_share,
    teacher_key_entries,
    teacher_model_spec,
    teacher_sft_enabled,
)

TUNED = ["teacher.sft.enabled=true", "data.n_labeled=10", "teacher.sft.held_out=4", "teacher.sft.batch_size=2",
         "teacher.sft.eval_every=1", "teacher.sft.epochs=4", "teacher.sft.lr=0.02", "teacher.sft.checkpoint_every=0"]


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("teacher") / "model", layers=4)


def config(root, teacher, extra=()):
    return load_config("tldr", tiny_overrides(root, teacher) + list(extra))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, teacher_folder):
    root = tmp_path_factory.mktemp("tuned")
    cfg = config(root, teacher_folder, TUNED)
    store = ArtifactStore(cfg.artifacts_root)
    data = run_prepare_data(cfg, store)
    return cfg, store, data, run_sft_teacher(cfg, store, data)


def test_enabled_auto_follows_the_backend_and_true_with_an_api_teacher_fails_at_load(tmp_path, teacher_folder):
    assert teacher_sft_enabled(load_config("tldr", ["teacher.sampling.backend=hf"]))
    assert teacher_sft_enabled(load_config("tldr", ["teacher.sampling.backend=vllm"]))
    api = ["teacher.sampling.backend=openai", "teacher.sampling.api.model=m", f"student.model={teacher_folder}",
           "eval.judge.enabled=false"]
    assert not teacher_sft_enabled(load_config("tldr", api))
    assert not teacher_sft_enabled(load_config("tldr", ["teacher.sft.enabled=false"]))
    with pytest.raises(ConfigError) as err:
        load_config("tldr", api + ["teacher.sft.enabled=true"])
    assert "override 'teacher.sft.enabled=true': teacher.sft.enabled=true" in str(err.value)
    assert not teacher_sft_enabled(load_config("demo"))  # off for time in the demo


def test_off_the_stage_holds_no_model_and_every_key_is_todays(tmp_path, teacher_folder):
    cfg = config(tmp_path, teacher_folder)
    store = ArtifactStore(cfg.artifacts_root)
    data = run_prepare_data(cfg, store)
    off = run_sft_teacher(cfg, store, data)
    assert off.manifest["config"] == {"enabled": False} and off.manifest["upstream"] == {}
    assert not off.file(MODEL_DIR).exists()
    s = stage_sampling._sampling(cfg, "sample_teacher", data, teacher=local_teacher(cfg, off))
    # the key sample_teacher had before the stage existed: the teacher's weights, its prompt and sampling
    assert s.config == {"teacher": teacher_identity(cfg), **sampling_slice(cfg, "teacher", "hf")}
    assert s.upstream == (data,) and s.spec.model == str(teacher_folder) and s.prompt.fewshot_k == 2
    assert teacher_key_entries(cfg, store, data) == {"teacher": dev_teacher_identity(cfg),
                                                     **keyed_slice(cfg, ["teacher.prompt"])}
    samples = run_sample_teacher(cfg, store, data, off)
    assert samples.key == stage_key("sample_teacher", s.config, [data])
    assert run_stage("sample_teacher", cfg, store).key == samples.key


def test_the_held_out_rows_are_labeled_ones_by_a_stable_hash_never_dev(tuned):
    cfg, store, data, artifact = tuned
    labeled, dev = read_split(data, "labeled"), read_split(data, "dev")
    by_hash = sorted(labeled["id"], key=lambda i: hashlib.sha256(f"0:{i}".encode()).hexdigest())
    stats = artifact.manifest["stats"]
    assert stats["held_out_rows"] == 4 and stats["examples"] == 6
    assert not set(by_hash[:4]) & set(dev["id"])
    log = pd.read_parquet(artifact.file("train_log.parquet"))
    assert len(log) == 4 * 3 and log["eval_loss"].notna().all()  # 3 batches of 2 a epoch, evaluated every step
    assert stats["kept_step"] == int(log.loc[log["eval_loss"].idxmin(), "step"])
    assert stats["best_eval_loss"] == pytest.approx(log["eval_loss"].min())


def held_out_nll(cfg, data, folder, ids):
    """Token-mean NLL of the references of the rows ``ids`` under the model in ``folder``, in float64,
    row by row without padding, averaged per batch of two rows of similar length as the trainer groups them."""
    model, _ = load_model(str(folder), cfg.cache_dir)
    model = model.double()
    tokenizer = real_tokenizer()
    rows = read_split(data, "labeled").set_index("id").loc[ids].reset_index()
    prompts = build_prompts(rows, tokenizer, cfg.teacher.prompt.template, [], "", cfg.teacher.prompt.max_tokens,
                            task_spec("tldr"))[0]
    sequences = []
    for prompt, reference in zip(prompts, rows["reference"]):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(" " + reference.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append((p, c))
    sequences.sort(key=lambda pc: len(pc[0]) + len(pc[1]))
    means = []
    for pair in (sequences[:2], sequences[2:]):
        total, count = 0.0, 0
        for p, c in pair:
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0], -1)
            total += sum(-logp[len(p) - 1 + j, t].item() for j, t in enumerate(c))
            count += len(c)
        means.append(total / count)
    return sum(means) / len(means)


def test_the_kept_weights_are_the_best_held_out_steps_recomputed_by_hand(tuned):
    cfg, store, data, artifact = tuned
    log = pd.read_parquet(artifact.file("train_log.parquet"))
    labeled = read_split(data, "labeled")
    held = sorted(labeled["id"], key=lambda i: hashlib.sha256(f"0:{i}".encode()).hexdigest())[:4]
    nll = held_out_nll(cfg, data, artifact.file(MODEL_DIR), held)
    assert nll == pytest.approx(log["eval_loss"].min(), rel=1e-4)
    if log["eval_loss"].idxmin() != len(log) - 1:  # the best is not the last: the last weights were not kept
        assert nll != pytest.approx(log["eval_loss"].iloc[-1], rel=1e-4)


def test_on_the_tuned_teacher_is_sampled_zero_shot_and_keyed_by_the_stage(tuned):
    cfg, store, data, artifact = tuned
    spec = teacher_model_spec(cfg, store, data)
    assert spec.tuned.key == artifact.key and spec.model == str(artifact.file(MODEL_DIR).resolve())
    assert spec.prompt.fewshot_k == 0 and spec.prompt.template == cfg.teacher.prompt.template
    assert teacher_key_entries(cfg, store, data) == {"teacher": {"sft_teacher": artifact.key},
                                                     "teacher.prompt": {**keyed_slice(cfg, ["teacher.prompt"])[
                                                         "teacher.prompt"], "fewshot_k": 0}}
    samples = run_sample_teacher(cfg, store, data, artifact)
    assert samples.manifest["upstream"] == {"prepare_data": data.key, "sft_teacher": artifact.key}
    assert samples.manifest["config"]["teacher"] == {"sft_teacher": artifact.key}
    frame = pd.read_parquet(samples.file("samples.parquet"))
    assert set(frame["model"]) == {f"sft_teacher:{artifact.key}"}
    s = stage_sampling._sampling(cfg, "sample_teacher", data, teacher=spec)
    prompts = stage_sampling._sampling_inputs(cfg, store, s)["prompts"]
    assert not any(cfg.teacher.prompt.fewshot_separator in p for p in prompts)  # no worked examples
    untuned = stage_sampling._sampling(cfg, "sample_teacher", data)
    assert untuned.config["teacher"] == teacher_identity(cfg) and samples.key != stage_key(
        "sample_teacher", untuned.config, [data])


def test_a_changed_teacher_sft_setting_moves_the_stage_and_the_samples_keys(tuned, tmp_path):
    cfg, store, data, artifact = tuned
    other = load_config("tldr", tiny_overrides(store.root.parent, cfg.teacher.model) + TUNED + ["teacher.sft.lr=0.01"])
    from plad_core.stages.teacher import sft_teacher_config
    assert stage_key("sft_teacher", sft_teacher_config(other), [data]) != artifact.key
    assert sft_teacher_config(other)["teacher.sft"]["bf16"] is False  # precision keyed as resolved
    with pytest.raises(FileNotFoundError, match="sft_teacher"):
        teacher_model_spec(other, store, data)  # not built: a lookup says so rather than training


def test_repeated_trigram_share_counts_repeats_of_earlier_trigrams():
    assert repeated_trigram_share("a b c a b c") == pytest.approx(1 / 4)  # abc bca cab abc: one repeat
    assert repeated_trigram_share("I am I am I am") == pytest.approx(2 / 4)  # iai aia iai aia
    assert repeated_trigram_share("one two") == 0.0 and repeated_trigram_share("") == 0.0
    assert repeated_trigram_share("The cat sat the CAT sat") == pytest.approx(1 / 4)  # lower-cased


def test_the_pairs_teacher_follows_the_samples_and_a_config_with_it_loads_the_tuned_model(tuned):
    cfg, store, data, artifact = tuned
    from plad_core import models
    from plad_core.stages.teacher import pairs_teacher, with_teacher
    student = run_stage("sft_student", cfg, store)
    pairs = run_stage("build_pairs", cfg, store, done={"prepare_data": data, "sft_student": student,
                                                       "sft_teacher": artifact})
    assert pairs.manifest["upstream"]["sample_teacher"] == run_sample_teacher(cfg, store, data, artifact).key
    spec = pairs_teacher(cfg, store, pairs)
    assert spec.tuned.key == artifact.key
    tuned_cfg = with_teacher(cfg, spec)
    assert tuned_cfg.teacher.model == spec.model and tuned_cfg.eval.judge.model == cfg.teacher.model
    loaded, _ = models.load_teacher(tuned_cfg)
    saved, _ = load_model(str(artifact.file(MODEL_DIR)), cfg.cache_dir)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), saved.state_dict().values()))
    off = load_config("tldr", tiny_overrides(store.root.parent, cfg.teacher.model))
    assert with_teacher(off, local_teacher(off, None)) is off


def test_a_tuning_slice_is_scored_by_the_teacher_tuned_on_its_source_split(tuned):
    cfg, store, data, artifact = tuned
    from plad_core.stages.evaluate import run_dev_outputs
    from plad_core.stages.tune_data import run_tune_data
    tune = run_tune_data(cfg, store, data, 2)
    assert teacher_model_spec(cfg, store, tune).tuned.key == artifact.key  # not a teacher keyed by the slice
    outputs = run_dev_outputs(cfg, store, tune)
    assert outputs.manifest["config"]["teacher"] == {"sft_teacher": artifact.key}
    assert outputs.manifest["upstream"] == {"tune_data": tune.key}
    assert set(pd.read_parquet(outputs.file("generations.parquet"))["id"]) == set(read_split(tune, "dev")["id"])
    assert [p.name for p in (store.root / "sft_teacher").iterdir() if not p.name.startswith(".")] == [artifact.key]
