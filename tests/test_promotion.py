"""The promotion rule on constructed scores, and the registry: lineages, its old schema, its model
copies, and two processes deciding at once."""

import math
import multiprocessing
import sqlite3

import numpy as np
import pytest

from plad_core.registry import COLUMNS, Lineage, Registry, promotion_decision

TLDR = Lineage("tldr", "data1", "teacher1")


def test_worse_or_equal_challenger_is_not_promoted_and_better_is():
    rng = np.random.default_rng(0)
    champion = rng.uniform(0.1, 0.5, 64)
    worse = promotion_decision(list(champion - 0.05), list(champion))
    assert not worse["promoted"] and worse["difference"] == pytest.approx(-0.05)
    assert worse["ci_low"] == pytest.approx(-0.05) and worse["ci_high"] == pytest.approx(-0.05)  # constant difference
    assert "does not beat" in worse["reason"]
    tie = promotion_decision(list(champion), list(champion))
    assert not tie["promoted"] and tie["ci_low"] == tie["ci_high"] == 0
    noisy = promotion_decision(list(champion + rng.normal(0.005, 0.1, 64)), list(champion))
    assert not noisy["promoted"] and noisy["ci_low"] < 0 < noisy["ci_high"]
    better = promotion_decision(list(champion + 0.05), list(champion))
    assert better["promoted"] and better["ci_low"] == pytest.approx(0.05)
    assert better["champion_score"] == pytest.approx(float(np.mean(champion)))


def test_no_champion_promotes_only_a_challenger_with_scores():
    assert promotion_decision([0.2, 0.3], None) == {"promoted": True, "reason": "no champion yet"}
    for scores, why in (([], "has no scores"), ([0.2, math.nan, 0.3], "has 1 missing or NaN scores of 3"),
                        ([None, 0.1], "has 1 missing or NaN scores of 2")):
        decision = promotion_decision(scores, None)
        assert not decision["promoted"] and decision["reason"] == f"not promoted: the challenger {why}"
        assert not promotion_decision(scores, [0.0] * len(scores))["promoted"]  # nor against a champion


def test_a_nan_champion_rescore_keeps_the_champion():
    decision = promotion_decision([0.9, 0.8, 0.9], [0.1, math.nan, 0.1])
    assert not decision["promoted"]
    assert decision["reason"] == "cannot compare, champion kept: its re-scoring has 1 missing or NaN scores of 3"


def test_champions_are_kept_per_lineage(tmp_path):
    registry = Registry(tmp_path / "reg.sqlite")
    other_data, other_teacher = TLDR._replace(data_key="data2"), TLDR._replace(teacher_key="teacher2")
    assert registry.champion(TLDR) is None
    first = registry.decide_and_record({"promoted": True, "calibrate_key": "k1"}, TLDR, None)
    registry.decide_and_record({"promoted": False, "calibrate_key": "k2"}, TLDR, first["id"])
    registry.decide_and_record({"promoted": True, "calibrate_key": "h1"}, Lineage("hh", "data1", "teacher1"), None)
    assert registry.champion(TLDR)["calibrate_key"] == "k1"
    for lineage in (other_data, other_teacher):  # same config name, another data file or teacher: no champion
        assert registry.champion(lineage) is None
    registry.decide_and_record({"promoted": True, "calibrate_key": "d1"}, other_data, None)
    registry.decide_and_record({"promoted": True, "calibrate_key": "k3"}, TLDR, first["id"])
    assert registry.champion(TLDR)["calibrate_key"] == "k3" and registry.champion(other_data)["calibrate_key"] == "d1"
    history = Registry(tmp_path / "reg.sqlite").history()
    assert list(history["calibrate_key"]) == ["k1", "k2", "h1", "d1", "k3"]
    assert list(history["promoted"]) == [1, 0, 1, 1, 1]
    assert list(history["data_key"]) == ["data1", "data1", "data1", "data2", "data1"]


def test_a_decision_against_a_champion_that_changed_is_not_promoted(tmp_path):
    registry = Registry(tmp_path / "reg.sqlite")
    first = registry.decide_and_record({"promoted": True, "calibrate_key": "k1"}, TLDR, None)
    assert registry.decide_and_record({"promoted": True, "calibrate_key": "k2"}, TLDR, None) is None  # scored vs none
    late = registry.decide_and_record({"promoted": True, "calibrate_key": "k2"}, TLDR, None, {"reason": "changed"})
    assert not late["promoted"] and late["reason"] == "changed"
    assert registry.champion(TLDR)["id"] == first["id"]
    assert list(registry.history()["promoted"]) == [1, 0]


def test_a_registry_of_the_old_schema_gains_the_lineage_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    old = {k: v for k, v in COLUMNS.items() if k not in ("data_key", "teacher_key")}
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                   f"{', '.join(f'{k} {v}' for k, v in old.items())})")
        db.execute("INSERT INTO history (config, promoted, calibrate_key, reason) VALUES ('tldr', 1, 'k0', 'old')")
    registry = Registry(path)
    with sqlite3.connect(path) as db:
        assert [row[1] for row in db.execute("PRAGMA table_info(history)")] == ["id", *COLUMNS]
    assert registry.champion(TLDR) is None  # an old champion's data and teacher are unknown: not comparable
    registry.decide_and_record({"promoted": True, "calibrate_key": "k1"}, TLDR, None)
    history = Registry(path).history()
    assert list(history["calibrate_key"]) == ["k0", "k1"]
    assert list(history["teacher_key"].fillna("-")) == ["-", "teacher1"]


def test_keep_model_copies_the_folder_beside_the_registry(tmp_path):
    source = tmp_path / "store" / "calibrate" / "abc" / "model"
    (source / "sub").mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"\x00weights")
    (source / "sub" / "config.json").write_text("{}")
    registry = Registry(tmp_path / "reg" / "registry.sqlite")
    kept = registry.keep_model(source, "abc")
    assert kept == tmp_path / "reg" / "models" / "abc"
    assert (kept / "model.safetensors").read_bytes() == b"\x00weights" and (kept / "sub" / "config.json").is_file()
    (source / "model.safetensors").write_bytes(b"changed")
    assert registry.keep_model(source, "abc") == kept and (kept / "model.safetensors").read_bytes() == b"\x00weights"
    assert sorted(p.name for p in kept.parent.iterdir()) == ["abc"]  # no temporary folder left


def _contend(path, name, barrier, rounds, results):
    """One of two processes: per round, read the (absent) champion, wait for the other, then decide."""
    barrier.wait(timeout=60)
    registry = Registry(path)  # both create and migrate the table at once, too
    for r in range(rounds):
        lineage = TLDR._replace(data_key=f"round{r}")
        champion = registry.champion(lineage)
        barrier.wait(timeout=60)  # both have scored against "no champion" before either records
        row = registry.decide_and_record({"promoted": True, "reason": "no champion yet", "run_id": name}, lineage,
                                         champion["id"] if champion else None, {"reason": "champion changed"})
        results.put((r, name, row["promoted"]))


@pytest.mark.slow
def test_two_processes_promoting_at_once_make_one_champion(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, results, rounds = context.Barrier(2), context.Queue(), 6
    path = tmp_path / "registry.sqlite"
    workers = [context.Process(target=_contend, args=(path, name, barrier, rounds, results)) for name in "ab"]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * rounds)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    for r in range(rounds):
        assert sorted(promoted for rr, _, promoted in outcomes if rr == r) == [False, True]
    history = Registry(path).history()
    assert len(history) == 2 * rounds
    for r in range(rounds):
        rows = history[history["data_key"] == f"round{r}"]
        assert sorted(rows["promoted"]) == [0, 1] and sorted(rows["reason"]) == ["champion changed", "no champion yet"]
        winner = rows.loc[rows["promoted"] == 1, "run_id"].item()
        assert Registry(path).champion(TLDR._replace(data_key=f"round{r}"))["run_id"] == winner
