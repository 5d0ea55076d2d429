"""A teacher behind an API (``teacher.sampling.backend=openai``): the config must name the student and
the judge before any stage runs, and the whole pipeline then runs against the project's own server
without loading a local teacher: its y_T and its dev outputs are the server's answers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest
from omegaconf import OmegaConf

from plad_core.config import ConfigError, PladConfig, load_config

API_TEACHER = ["teacher.sampling.backend=openai", "teacher.sampling.api.model=served"]


def test_an_api_teacher_needs_student_model_and_an_explicit_judge_at_load():
    with pytest.raises(ConfigError) as err:
        load_config("base", API_TEACHER)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 2
    assert lines[0].startswith("  schema default: student.model is unset, but teacher.sampling.backend=openai")
    assert "a teacher behind an API has no weights here to cut; set student.model" in lines[0]
    assert lines[1].startswith("  ") and lines[1].endswith(
        "conf/base.yaml: eval.judge.model is ${teacher.model} (its default), which the hf judge would load here, but "
        "teacher.sampling.backend=openai puts the teacher behind an API: set eval.judge.model to a local judge "
        "model, or eval.judge.backend=openai with eval.judge.api (base_url, model), or eval.judge.enabled=false")
    with pytest.raises(ConfigError, match="eval.judge.model is") as err:
        load_config("base", API_TEACHER + ["student.model=some/student"])
    assert "student.model is unset" not in str(err.value)
    for judge in (["eval.judge.enabled=false"], ["eval.judge.model=some/judge"],
                  ["eval.judge.backend=openai", "eval.judge.api.model=judge"]):
        cfg = load_config("base", API_TEACHER + ["student.model=some/student", *judge])
        assert cfg.student.model == "some/student"
    assert load_config("base").eval.judge.model == load_config("base").teacher.model  # a local teacher: as before


@pytest.mark.slow  # imports Prefect (the CLI)
def test_plad_stage_stops_before_any_stage_and_init_student_refuses_to_cut_an_api_teacher(tmp_path):
    from flows.cli import build_parser, cmd_stage, parse_args

    from plad_core.artifacts import ArtifactStore
    from plad_core.stages import run_init_student

    root = tmp_path / "artifacts"
    args = parse_args(build_parser(), ["stage", "prepare_data", "--config", "base", f"artifacts_root={root}",
                                       "eval.judge.enabled=false", *API_TEACHER])
    with pytest.raises(ConfigError, match="student.model is unset"):
        cmd_stage(args)
    assert not root.exists()
    # a config built without load_config (no validation) is refused by the stage itself, before any load
    built = OmegaConf.merge(OmegaConf.structured(PladConfig), OmegaConf.from_dotlist(API_TEACHER))
    with pytest.raises(ConfigError, match="student.model is unset"):
        run_init_student(built, ArtifactStore(root), data=None)


# -- the whole pipeline against the project's server ----------------------------------------------------------------

def greedy(url: str, model: str, prompt: str, max_tokens: int, stop: list[str]) -> str:
    """The server's greedy answer, asked directly over HTTP (not through plad's client)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **({"stop": stop} if stop else {})}
    answer = httpx.post(f"{url}/completions", json=body, timeout=120)
    answer.raise_for_status()
    text = answer.json()["choices"][0]["text"]
    for s in stop:
        text = text.split(s)[0]
    return text.strip()


@pytest.mark.slow
def test_the_pipeline_with_an_api_teacher_loads_no_teacher_and_reads_the_servers_answers(tmp_path):
    from sampling.fault_server import serve, server_state
    from tiny import make_tiny_model, tiny_overrides

    from plad_core.artifacts import ArtifactStore
    from plad_core.stages import read_split, run_stage
    from plad_core.stages.evaluate import run_dev_outputs

    served = make_tiny_model(tmp_path / "api-teacher", layers=2, seed=0)
    student = make_tiny_model(tmp_path / "student", layers=2, seed=1)
    missing = tmp_path / "no-such-teacher"  # teacher.model: any local load of it would fail loudly
    with serve(served, tmp_path / "server.log") as url:
        overrides = tiny_overrides(tmp_path, missing) + [
            "teacher.sampling.backend=openai", f"teacher.sampling.api.base_url={url}",
            f"teacher.sampling.api.model={served}", "teacher.sampling.api.concurrency=2",
            "teacher.sampling.temperature=0", "teacher.prompt.fewshot_k=0", "teacher.prompt.max_tokens=4096",
            f"student.model={student}", "eval.dtype=float32", "eval.calibration_samples=2",
            "eval.judge.backend=openai", f"eval.judge.api.base_url={url}", f"eval.judge.api.model={served}",
            "eval.judge.api.concurrency=2", "eval.judge.rows=2"]
        cfg = load_config("base", overrides)
        store = ArtifactStore(Path(cfg.artifacts_root))
        done: dict = {}
        evaluated = run_stage("evaluate", cfg, store, done=done)
        requests = server_state(url)["requests"]
        data = done["prepare_data"]
        template = cfg.teacher.prompt.template
        dev, unlabeled = read_split(data, "dev"), read_split(data, "unlabeled")
        dev_prompts = [template.format(**r) for r in dev.to_dict("records")]
        unlabeled_prompts = [template.format(**r) for r in unlabeled.to_dict("records")]
        assert max(map(len, dev_prompts + unlabeled_prompts)) < 4096 * 4  # none was truncated
        expected_dev = [greedy(url, str(served), p, cfg.eval.max_new_tokens, list(cfg.eval.stop)) for p in dev_prompts]
        expected_y_t = dict(zip(unlabeled["id"], (greedy(url, str(served), p, cfg.teacher.sampling.max_new_tokens, [])
                                                  for p in unlabeled_prompts)))
        teacher_outputs = run_dev_outputs(cfg, store, data)  # reused, not rebuilt

    # the server answered sample_teacher's 6 prompts and the teacher's 4 dev prompts, and judged 2 rows x 5 pairs
    # x 2 orders over chat (the systems teacher, sft, plad against the reference, teacher and plad against sft),
    # and the judge's validity check: 2 known-answer cases x 2 orders
    assert requests == {"/v1/completions": 6 + 4, "/v1/chat/completions": 2 * 5 * 2 + 2 * 2}
    generations = pd.read_parquet(teacher_outputs.file("generations.parquet"))
    assert list(generations["id"]) == list(dev["id"]) and list(generations["text"]) == expected_dev
    report = pd.read_parquet(evaluated.file("generations.parquet"))
    assert list(report[report["system"] == "teacher"]["text"]) == expected_dev
    teacher_key = teacher_outputs.manifest["config"]["teacher"]
    assert teacher_key["backend"] == "openai" and teacher_key["base_url"] == url and teacher_key["model"] == str(served)
    assert evaluated.manifest["config"]["teacher"] == teacher_key
    pairs = pd.read_parquet(done["build_pairs"].file("pairs.parquet"))
    assert len(pairs) > 0 and all(pairs["chosen"] == pairs["id"].map(expected_y_t))
    judgments = pd.read_parquet(evaluated.file("judgments.parquet"))
    assert len(judgments) == 24 and judgments["raw"].notna().all()
