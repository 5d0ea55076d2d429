"""The students' calibration samples: each scored by the student that wrote it (a tiny model)."""

import pytest


@pytest.mark.slow
def test_calibration_samples_are_scored_by_the_student(tmp_path):
    import torch
    from tiny import CACHE, TLDR, make_tiny_model

    from plad_core.artifacts import Artifact
    from plad_core.config import load_config
    from plad_core.data import load_rows, split_rows
    from plad_core.models import load_model
    from plad_core.stages.evaluate import dev_calibration_samples
    from plad_core.stages.inputs import prompts_for
    from plad_core.training.batches import collate, encode
    from plad_core.training.logprobs import sequence_logprobs

    rows = split_rows(load_rows(str(TLDR)).rows, {"labeled": 2, "unlabeled": 0, "dev": 5}, "plad-v1")
    (tmp_path / "data").mkdir()
    rows.to_parquet(tmp_path / "data" / "rows.parquet", index=False)
    data = Artifact("prepare_data", "k", tmp_path / "data", {"config": {"data.task": "tldr"}})
    cfg = load_config("tldr", [f"cache_dir={CACHE}", "eval.dtype=float32", "eval.max_new_tokens=6",
                               "eval.calibration_samples=3", "eval.calibration_rows=4", "eval.stop=[]"])
    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "student", layers=2)), CACHE)
    dev = rows[rows["split"] == "dev"].reset_index(drop=True)
    samples = dev_calibration_samples(model, tokenizer, "plad", dev, data, cfg)
    assert len(samples) == 4 * 3 and list(samples["id"].unique()) == list(dev["id"].head(4))
    assert list(samples["sample_index"]) == [0, 1, 2] * 4
    # each sample's log P̄ is the student's own, scored alone (no batch effects in float32)
    prompts, _ = prompts_for(dev.head(4), data, cfg.student.prompt, tokenizer)
    row = samples.iloc[7]
    item = encode(tokenizer, prompts[list(dev["id"]).index(row["id"])], row["text"], 1000)
    with torch.inference_mode():
        total, count = sequence_logprobs(model, collate([item], tokenizer.pad_token_id))
    assert row["scored_tokens"] == int(count[0])
    assert row["logp_mean"] == pytest.approx(float(total[0] / count[0]), abs=1e-4)
    assert samples["rougeL"].between(0, 1).all()
