import json

import pandas as pd
import pytest
from tiny import HH, TLDR, real_tokenizer

from plad_core.data import (
    TASKS,
    DataError,
    build_prompts,
    fewshot_examples,
    load_rows,
    render_prompt,
    split_rows,
)

ROW = {"id": "a", "subreddit": "test", "title": "T", "post": "hello there", "summary": "hi"}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_real_file_loads_all_rows():
    loaded = load_rows(str(TLDR))
    assert len(loaded.rows) == 1945 and loaded.dropped_empty == 0
    assert loaded.rows[0]["id"] == "oai1b-0"


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROW, {**ROW, "id": "b"}, '{"id": "c", "post": '])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        load_rows(path)


def test_missing_field_names_file_line_and_field(tmp_path):
    broken = {k: v for k, v in ROW.items() if k != "summary"} | {"id": "b"}
    path = write_jsonl(tmp_path / "rows.jsonl", [ROW, broken])
    with pytest.raises(DataError, match=r"rows\.jsonl:2: missing field 'summary'"):
        load_rows(path)


def test_wrong_type_names_field(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{**ROW, "post": 3}])
    with pytest.raises(DataError, match=r"rows\.jsonl:1: field 'post' must be a string"):
        load_rows(path)


def test_duplicate_id_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [ROW, ROW])
    with pytest.raises(DataError, match=r"rows\.jsonl:2: field 'id' repeats 'a' first seen on line 1"):
        load_rows(path)


def test_empty_posts_are_dropped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [ROW, {**ROW, "id": "b", "post": "  "}, {**ROW, "id": "c"},
                                                 {**ROW, "id": "d", "summary": ""}])
    loaded = load_rows(path)
    assert [r["id"] for r in loaded.rows] == ["a", "c"] and loaded.dropped_empty == 2
    assert loaded.rows[0]["reference"] == "hi"


def test_hh_rows_load_and_truncate_from_the_start():
    loaded = load_rows(str(HH), task="hh")
    assert len(loaded.rows) == 2307 - 4 and loaded.dropped_empty == 4   # 4 upstream rows have an empty chosen
    row = max(loaded.rows, key=lambda r: len(r["prompt"]))
    tokenizer = real_tokenizer()
    prompts, truncated = build_prompts(pd.DataFrame([row]), tokenizer, "{prompt}", [], "", 64, TASKS["hh"])
    assert truncated == 1 and prompts[0].endswith("\n\nAssistant:")
    assert len(tokenizer(prompts[0], add_special_tokens=False)["input_ids"]) <= 64


def test_unknown_task_is_an_error():
    with pytest.raises(DataError, match="data.task='qa' is unknown"):
        load_rows(str(TLDR), task="qa")


def test_parquet_input(tmp_path):
    pd.DataFrame([ROW, {**ROW, "id": "b"}]).to_parquet(tmp_path / "rows.parquet")
    assert [r["id"] for r in load_rows(str(tmp_path / "rows.parquet")).rows] == ["a", "b"]


def test_split_is_disjoint_sized_and_independent_of_file_order():
    rows = load_rows(str(TLDR)).rows
    sizes = {"labeled": 50, "unlabeled": 100, "dev": 30}
    first = split_rows(rows, sizes, "salt")
    second = split_rows(list(reversed(rows)), sizes, "salt")
    assert first["split"].value_counts().to_dict() == sizes
    assert first["id"].is_unique
    pd.testing.assert_frame_equal(first.sort_values("id").reset_index(drop=True),
                                  second.sort_values("id").reset_index(drop=True))
    assert set(split_rows(rows, sizes, "other")["id"]) != set(first["id"])


def test_split_larger_than_data_is_an_error():
    with pytest.raises(DataError, match="need 5 rows but the data has 1"):
        split_rows([ROW], {"labeled": 2, "unlabeled": 2, "dev": 1}, "s")


def test_fewshot_examples_are_the_shortest_labeled_posts():
    labeled = pd.DataFrame([{**ROW, "id": "x", "post": "a" * 50}, {**ROW, "id": "y", "post": "a" * 5},
                            {**ROW, "id": "z", "post": "a" * 20}])
    labeled["reference"] = labeled["summary"]
    assert [e["id"] for e in fewshot_examples(labeled, 2, "post")] == ["y", "z"]
    prompt = render_prompt(ROW, "P: {post}\nS:", fewshot_examples(labeled, 1, "post"), "\n##\n")
    assert prompt == "P: aaaaa\nS: hi\n##\nP: hello there\nS:"


def test_prompts_are_truncated_to_the_token_budget_and_counted():
    tokenizer = real_tokenizer()
    rows = pd.DataFrame([{**ROW, "id": "short"}, {**ROW, "id": "long", "post": "word " * 400}])  # tldr by default
    prompts, truncated = build_prompts(rows, tokenizer, "POST: {post}\nTL;DR:", [], "", 64)
    assert truncated == 1
    assert prompts[0] == "POST: hello there\nTL;DR:"
    assert len(tokenizer(prompts[1], add_special_tokens=False)["input_ids"]) <= 64
    assert prompts[1].endswith("\nTL;DR:")


def test_appending_rows_never_moves_a_row_to_another_split():
    rows = load_rows(str(TLDR)).rows
    sizes = {"labeled": 100, "unlabeled": 150, "dev": 50}
    before = split_rows(rows[:800], sizes, "salt").set_index("id")["split"]
    after = split_rows(rows, sizes, "salt").set_index("id")["split"]
    kept = before.index.intersection(after.index)
    assert len(kept) > 0.3 * len(before)  # the first 800 rows are 41% of the file
    assert (before[kept] == after[kept]).all()
    # A row of the first file that left its split's sample is in no other split either.
    assert not (set(before.index) - set(after.index)) & set(after.index)


def test_a_split_short_of_rows_names_the_split_and_the_setting():
    rows = load_rows(str(TLDR)).rows[:30]
    with pytest.raises(DataError, match=r"split 'dev' needs 10 rows but only \d+ of the 30 rows .*data.n_dev"):
        split_rows(rows, {"labeled": 10, "unlabeled": 10, "dev": 10}, "salt")
