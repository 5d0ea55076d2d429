import numpy as np

from plad_core.registry import Registry, promotion_decision


def test_worse_or_equal_challenger_is_not_promoted_and_better_is():
    rng = np.random.default_rng(0)
    champion = rng.uniform(0.1, 0.5, 64)
    worse = promotion_decision(list(champion - 0.05), list(champion))
    assert not worse["promoted"] and worse["difference"] < 0 and worse["ci_high"] < 0
    assert "does not beat" in worse["reason"]
    tie = promotion_decision(list(champion), list(champion))
    assert not tie["promoted"] and tie["ci_low"] == tie["ci_high"] == 0
    noisy = promotion_decision(list(champion + rng.normal(0.005, 0.1, 64)), list(champion))
    assert not noisy["promoted"] and noisy["ci_low"] < 0 < noisy["ci_high"]
    better = promotion_decision(list(champion + 0.05), list(champion))
    assert better["promoted"] and better["ci_low"] > 0


def test_registry_keeps_history_and_the_latest_promoted_champion(tmp_path):
    registry = Registry(tmp_path / "reg.sqlite")
    assert registry.champion("tldr") is None
    registry.record({"config": "tldr", "promoted": True, "calibrate_key": "k1", "reason": "no champion yet"})
    registry.record({"config": "tldr", "promoted": False, "calibrate_key": "k2", "reason": "worse"})
    registry.record({"config": "hh", "promoted": True, "calibrate_key": "h1", "reason": "no champion yet"})
    assert registry.champion("tldr")["calibrate_key"] == "k1"
    registry.record({"config": "tldr", "promoted": True, "calibrate_key": "k3", "reason": "better"})
    assert registry.champion("tldr")["calibrate_key"] == "k3"
    history = Registry(tmp_path / "reg.sqlite").history()
    assert list(history["calibrate_key"]) == ["k1", "k2", "h1", "k3"] and list(history["promoted"]) == [1, 0, 1, 1]
