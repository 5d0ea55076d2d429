"""table.json from the table's dataclasses: fields in declaration order, a not-yet-computed field left out."""

import json

from plad_core.experiments.table_data import (
    EvalPoint,
    PairQuality,
    TrainingSummary,
    table_json,
)


def test_table_json_keeps_field_order_and_leaves_out_absent_fields():
    quality = PairQuality(pairs=3, with_reference=0, chosen_tokens=4.0, rejected_tokens=2.5)
    # no pair with a reference: no shares or difference, but the SFT pair accuracy is always there (None here)
    assert list(table_json(quality)) == ["pairs", "with_reference", "chosen_tokens", "rejected_tokens",
                                         "sft_pair_accuracy"]
    summary = TrainingSummary(steps=2, epochs=1, quarter_steps=1, loss_start=1.0, loss_end=0.5,
                              pair_accuracy_start=50.0, pair_accuracy_end=100.0, held_out_pairs=0,
                              sft_held_out_pair_accuracy=None)
    assert "eval_first" not in table_json(summary) and table_json(summary)["sft_held_out_pair_accuracy"] is None
    evaluated = TrainingSummary(**{**vars(summary), "eval_last": EvalPoint(2, 0.25, 75.0), "evaluations": 1})
    as_json = table_json({"runs": [evaluated]})["runs"][0]
    assert list(as_json)[-2:] == ["eval_last", "evaluations"]
    assert as_json["eval_last"] == {"step": 2, "loss": 0.25, "pair_accuracy": 75.0}
    json.dumps(as_json)  # plain JSON all the way down
