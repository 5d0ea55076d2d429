"""``plad eval``: models scored on a file the pipeline never saw, through ``flows.cli.main``, with real
tiny models, the embedded SmolLM2 saved as a local folder, and rouge-score recomputing every number."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from tiny import CACHE, FLOAT32, TLDR, make_tiny_model, tiny_overrides

from flows.cli import main
from plad_core.config import ConfigError, load_config
from plad_core.models import resolve_model_path
from plad_core.stages.eval_inputs import parse_model_args

FAST = ["eval.max_new_tokens=8", "eval.stop=[]", "eval.calibration_samples=0", "eval.judge.enabled=false",
        f"cache_dir={CACHE}", *FLOAT32]


def held_out_file(path: Path, n: int = 4, drop: str | None = None) -> Path:
    """``n`` real TL;DR posts under new ids (``heldout-<i>``), in a file the pipeline has not read;
    ``drop`` removes that field from the third row."""
    rows = [json.loads(line) for line in TLDR.read_text().splitlines()[100:100 + n]]
    with open(path, "w") as fh:
        for i, row in enumerate(rows):
            row = {**row, "id": f"heldout-{i}"}
            if drop and i == 2:
                del row[drop]
            fh.write(json.dumps(row) + "\n")
    return path


def eval_folder(out: str) -> Path:
    return Path(re.search(r"^Report:\s+(\S+)$", out, re.M).group(1)).parent


def rouge_l(texts, references):
    from rouge_score.rouge_scorer import RougeScorer
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, t)["rougeL"].fmeasure for t, r in zip(texts, references)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"smol": resolve_model_path("embedded:smollm2-135m-instruct", CACHE),
            "tiny": str(make_tiny_model(root / "tiny", layers=2, seed=0)),
            "teacher": str(make_tiny_model(root / "teacher", layers=4, seed=1))}


@pytest.mark.slow
def test_two_local_folders_are_scored_on_every_row_and_the_second_run_reuses_it(tmp_path, folders, capsys):
    data = held_out_file(tmp_path / "mine.jsonl")
    argv = ["eval", "--data", str(data), "--model", f"smol={folders['smol']}", "--model", f"tiny={folders['tiny']}",
            f"artifacts_root={tmp_path / 'artifacts'}", *FAST]
    main(argv)
    out = capsys.readouterr().out
    folder = eval_folder(out)
    assert "| smol |" in out and "tiny − smol" in out
    generations = pd.read_parquet(folder / "generations.parquet")
    metrics = json.loads((folder / "metrics.json").read_text())
    references = {json.loads(line)["id"]: json.loads(line)["summary"] for line in data.read_text().splitlines()}
    per_row = {}
    for system in ("smol", "tiny"):
        mine = generations[generations["system"] == system]
        assert sorted(mine["id"]) == sorted(references)  # every row of the file, no split
        per_row[system] = dict(zip(mine["id"], rouge_l(list(mine["text"]), [references[i] for i in mine["id"]])))
        expected = 100 * sum(per_row[system].values()) / len(references)
        assert metrics["systems"][system]["rougeL"] == pytest.approx(expected, abs=0.006)
        assert metrics["systems"][system]["n"] == len(references)
    assert metrics["systems"]["smol"]["rougeL"] > 0  # a real model's words overlap the references
    assert metrics["baseline"] == "smol"
    paired = metrics["paired_vs_baseline"]["tiny_vs_smol"]
    difference = 100 * sum(per_row["tiny"][i] - per_row["smol"][i] for i in references) / len(references)
    assert paired["n"] == len(references) and paired["difference"] == pytest.approx(difference, abs=0.006)
    report_md = (folder / "report.md").read_text()
    assert (folder / "report.html").is_file() and "tiny − smol" in report_md
    assert "PLaD vs SFT" not in report_md + (folder / "results.md").read_text()  # no PLaD here: no such section
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["models"]["tiny"]["outputs"].startswith("eval_outputs/")

    main(argv)
    again = capsys.readouterr().out
    assert eval_folder(again) == folder
    assert json.loads((folder / "manifest.json").read_text())["started_at"] == manifest["started_at"]


def test_a_bad_row_names_the_file_row_and_field(tmp_path, folders, capsys):
    data = held_out_file(tmp_path / "bad.jsonl", drop="post")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--data", str(data), "--model", f"tiny={folders['tiny']}",
              f"artifacts_root={tmp_path / 'artifacts'}", *FAST])
    assert exit_info.value.code == 2
    assert f"{data}:3: missing field 'post'" in capsys.readouterr().err


def test_an_unknown_spec_is_named(tmp_path, capsys):
    data = held_out_file(tmp_path / "mine.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--data", str(data), "--model", "mine=no-such-model",
              f"artifacts_root={tmp_path / 'artifacts'}", *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mine=no-such-model" in err and "not an artifact key" in err


def test_a_folder_with_only_a_pickle_checkpoint_is_refused_unless_use_safetensors_is_off(tmp_path, capsys):
    from sampling.pickle_model import make_bin_only_model
    folder = make_bin_only_model(tmp_path / "pickled", layers=1)
    argv = ["eval", "--data", str(held_out_file(tmp_path / "mine.jsonl", n=2)), "--model", f"p={folder}",
            f"artifacts_root={tmp_path / 'artifacts'}", *FAST]
    with pytest.raises(SystemExit):
        main(argv)
    assert f"cannot load model '{folder}'" in capsys.readouterr().err
    main([*argv, "student.use_safetensors=false"])
    assert "| p |" in capsys.readouterr().out


@pytest.mark.parametrize("words, message", [
    ([], "at least one --model"), (["nospec"], "NAME=SPEC"), (["a=x", "a=y"], "repeat"),
    (["reference=x"], "not 'reference'"), (["teacher=x"], "takes no SPEC")])
def test_model_arguments_are_checked(words, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_args(words)


@pytest.mark.slow
def test_an_artifact_key_the_teacher_and_the_judge(tmp_path, folders, capsys):
    """An init_student artifact by key, the few-shot teacher and an sft-named folder (the baseline),
    judged by a tiny model."""
    from plad_core.artifacts import ArtifactStore
    from plad_core.stages import read_split, run_stage

    overrides = [*tiny_overrides(tmp_path, Path(folders["teacher"])), *FAST]
    cfg = load_config("tldr", overrides)
    store = ArtifactStore(cfg.artifacts_root)
    student = run_stage("init_student", cfg, store)
    data = held_out_file(tmp_path / "mine.jsonl", n=4)
    main(["eval", "--data", str(data), "--rows", "3", "--model", f"init={student.key}",
          "--model", f"sft={folders['tiny']}", "--teacher", *overrides, "eval.judge.enabled=true", f"eval.judge.model={folders['tiny']}"])
    folder = eval_folder(capsys.readouterr().out)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"init", "sft", "teacher"} and metrics["baseline"] == "sft"
    assert set(metrics["paired_vs_baseline"]) == {"init_vs_sft", "teacher_vs_sft"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["models"]["init"]["outputs"].startswith("dev_outputs/")
    # the teacher's worked examples are the shortest labeled posts of the config's own split
    eval_data = store.get("eval_data", manifest["upstream"]["eval_data"])
    labeled = read_split(run_stage("prepare_data", cfg, store), "labeled")
    shortest = labeled.assign(n=labeled["post"].str.len()).sort_values(["n", "id"])["id"].head(2).tolist()
    assert read_split(eval_data, "labeled")["id"].tolist() == shortest
    assert read_split(eval_data, "dev")["id"].tolist() == ["heldout-0", "heldout-1", "heldout-2"]  # --rows 3
    judgments = pd.read_parquet(folder / "judgments.parquet")
    # each of 3 systems vs the reference, 2 vs sft, both orders, every row; and the validity check's
    # known-answer case of each row (its reference against another row's), both orders
    systems = judgments[judgments["opponent"] != "validity"]
    assert len(systems) == 3 * (3 + 2) * 2 and len(judgments) - len(systems) == 3 * 2
    assert metrics["judge"]["validity"]["n"] == 3
    assert set(metrics["judge"]["vs"]["reference"]) == {"init", "sft", "teacher"}


def test_the_champion_is_the_registrys(tmp_path, folders):
    from plad_core.registry import Registry, registry_path
    from plad_core.stages.eval_inputs import resolve_model
    from plad_core.stages.promote import promotion_lineage

    cfg = load_config("tldr", [f"artifacts_root={tmp_path / 'artifacts'}", f"teacher.model={folders['tiny']}", *FAST])
    from plad_core.artifacts import ArtifactStore
    store = ArtifactStore(cfg.artifacts_root)
    with pytest.raises(ConfigError, match="no champion"):
        resolve_model(cfg, store, "best", "champion")
    (tmp_path / "artifacts").mkdir()
    Registry(registry_path(cfg, store.root)).record({**promotion_lineage(cfg, None)._asdict(), "promoted": True,
                                                     "model_path": folders["tiny"], "calibrate_key": "c" * 16})
    champion = resolve_model(cfg, store, "best", "champion")
    assert champion.path == folders["tiny"] and champion.identity["champion"] == "c" * 16
