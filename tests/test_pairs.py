import pandas as pd

from plad_core.pairs import build_pairs


def samples(texts, model, seed):
    return pd.DataFrame([{"id": i, "sample_index": 0, "prompt": f"prompt {i}", "text": t, "prompt_tokens": 10,
                          "output_tokens": len(t.split()), "finish_reason": "stop", "backend": "hf", "model": model,
                          "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 48, "seed": seed}
                         for i, t in texts.items()])


def test_pairs_join_and_count_every_drop():
    teacher = samples({"a": "good summary", "b": "  ", "c": "same", "d": "teacher only", "e": "fine one"}, "T", 0)
    student = samples({"a": "bad summary", "b": "x", "c": " same ", "e": "fine two", "f": "student only"}, "S", 1)
    pairs, stats = build_pairs(teacher, student, {"a": "ref a", "e": "ref e"})
    assert list(pairs["id"]) == ["a", "e"]
    assert stats == {"teacher_rows": 5, "student_rows": 5, "dropped_unmatched": 2, "dropped_empty": 1,
                     "dropped_identical": 1, "pairs": 2}
    first = pairs.iloc[0]
    assert (first["chosen"], first["rejected"], first["reference"]) == ("good summary", "bad summary", "ref a")
    assert (first["teacher_model"], first["student_model"], first["teacher_seed"], first["student_seed"]) == ("T", "S", 0, 1)
    assert pairs.iloc[1]["prompt"] == "prompt e"
