"""Unlabeled means unlabeled: build_pairs leaves every pair's reference null unless pairs.references
is true, and that setting (not pairs.curate) is in its artifact key."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plad_core.artifacts import ArtifactStore
from plad_core.config import load_config
from plad_core.pairs import PAIRS_SCHEMA, build_pairs
from plad_core.sampling.schema import SAMPLES_SCHEMA
from plad_core.stages.pairs import run_build_pairs

IDS = ["u0", "u1", "u2"]
REFERENCES = {"u0": "cat sleeps", "u1": "low pay offer", "u2": "first 10k"}


def samples(model: str, seed: int, texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": IDS, "sample_index": 0, "prompt": [f"POST: {i}\nTL;DR:" for i in IDS], "text": texts,
                         "prompt_tokens": 4, "output_tokens": 3, "finish_reason": "stop", "backend": "hf",
                         "model": model, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8, "seed": seed})


TEACHER = samples("T", 0, ["my cat is lazy", "offer, low pay", "ran a 10k"])
STUDENT = samples("S", 1, ["cat", "job", "run"])


def test_build_pairs_without_references_leaves_the_column_null():
    pairs, _ = build_pairs(TEACHER, STUDENT, None)
    assert pairs["reference"].isna().all() and len(pairs) == 3
    table = pa.Table.from_pandas(pairs, schema=PAIRS_SCHEMA, preserve_index=False)
    assert table.column("reference").null_count == 3
    labeled, _ = build_pairs(TEACHER, STUDENT, REFERENCES)
    assert list(labeled["reference"]) == [REFERENCES[i] for i in IDS]


def _artifact(store, stage, frame, schema, name):
    def build(out, work):
        pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), out / name)
        return {}
    return store.materialize(stage, 1, {"test": stage}, {}, build)


def test_the_stage_keeps_references_out_by_default_and_keys_the_setting(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    rows = pd.DataFrame({"id": IDS, "split": "unlabeled", "reference": [REFERENCES[i] for i in IDS]})
    data = _artifact(store, "prepare_data", rows, None, "rows.parquet")
    t = _artifact(store, "sample_teacher", TEACHER, SAMPLES_SCHEMA, "samples.parquet")
    s = _artifact(store, "sample_student", STUDENT, SAMPLES_SCHEMA, "samples.parquet")

    def config(*overrides):
        return load_config("tldr", [f"artifacts_root={tmp_path / 'artifacts'}", *overrides])
    assert config().pairs.references is False
    plain = run_build_pairs(config(), store, data, t, s)
    assert pd.read_parquet(plain.file("pairs.parquet"))["reference"].isna().all()
    labeled = run_build_pairs(config("pairs.references=true"), store, data, t, s)
    assert labeled.key != plain.key
    assert list(pd.read_parquet(labeled.file("pairs.parquet"))["reference"]) == [REFERENCES[i] for i in IDS]
    # curation settings are curate_pairs' key, not build_pairs'
    assert run_build_pairs(config("pairs.curate.max_repeat_share=0.5"), store, data, t, s).key == plain.key
