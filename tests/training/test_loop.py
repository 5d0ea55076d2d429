"""train_loop's log (tokens, padding share, held-out evaluation), the best-or-last choice and
gradient checkpointing, against hand-computed values and plain reruns."""

import functools

import pytest
import torch
from pair_fixtures import tldr_pairs, trainer_overrides
from tiny import real_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from plad_core.config import load_config
from plad_core.training import distributed, loop
from plad_core.training.batches import Encoded, collate, pair_batches
from plad_core.training.held_out import Evaluation
from plad_core.training.steps import calibration_step, sft_step

tokenizer = functools.cache(real_tokenizer)


def small_llama(seed: int = 0, vocab: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0))


def text_batch(lengths: list[int]) -> dict[str, torch.Tensor]:
    """Plain-text rows of the given lengths (ids 1..63), right-padded by ``collate``."""
    return collate([Encoded([1 + (7 * i + j) % 63 for j in range(n)], 0) for i, n in enumerate(lengths)], 0)


def test_the_log_counts_real_tokens_and_the_padding_share_of_each_step():
    model = small_llama()
    batches = [text_batch([3, 5]), text_batch([4, 4]), text_batch([2, 6, 6])]
    # (real tokens, positions): 8 of 10, 8 of 8, 14 of 18
    assert [(float(b["attention_mask"].sum()), b["attention_mask"].numel()) for b in batches] == \
        [(8.0, 10), (8.0, 8), (14.0, 18)]
    history = loop.train_loop(model, batches, sft_step(model), lr=1e-3, grad_accum=2, seed=0)
    # shuffled order for seed 0, epoch 0; the last step takes the one batch left
    order = loop._epoch_order(3, 0, 0)
    masks = [batches[i]["attention_mask"] for i in order]
    first = (float(masks[0].sum() + masks[1].sum()), float(masks[0].numel() + masks[1].numel()))
    assert [row["tokens"] for row in history] == [first[0], float(masks[2].sum())]
    assert history[0]["padding_share"] == pytest.approx(1 - first[0] / first[1])
    assert history[1]["padding_share"] == pytest.approx(1 - float(masks[2].sum()) / masks[2].numel())


def test_gradient_checkpointing_trains_the_same_model():
    batches = [text_batch([5, 9]), text_batch([7, 7]), text_batch([3, 8])]
    runs = []
    for checkpointing in (False, True):
        model = small_llama()
        history = loop.train_loop(model, batches, sft_step(model), lr=1e-2, epochs=2, seed=0,
                                  gradient_checkpointing=checkpointing)
        assert not model.is_gradient_checkpointing  # switched off again after training
        runs.append((history, model.state_dict()))
    (log_a, weights_a), (log_b, weights_b) = runs
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], abs=1e-6)
    assert max(float((weights_a[k] - weights_b[k]).abs().max()) for k in weights_a) <= 1e-6


def pair_setup():
    cfg = load_config("base", trainer_overrides(**{"pair_forward": "concatenated", "optim.grad_accum": 1}))
    frame = tldr_pairs(16)
    train_batches = pair_batches(frame.head(12), tokenizer(), cfg.train)
    held_out = pair_batches(frame.tail(4), tokenizer(), cfg.train)  # batches of 3 and 1 pairs
    return cfg, train_batches, held_out


def tiny_student():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer()), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        tie_word_embeddings=True, pad_token_id=tokenizer().pad_token_id))


def test_held_out_metrics_are_means_over_held_out_pairs():
    cfg, batches, held_out = pair_setup()
    assert [int(b["chosen_score"].shape[0]) for b in held_out] == [3, 1] or \
        [int(b["chosen_score"].shape[0]) for b in held_out] == [1, 3]
    model = tiny_student()
    step = calibration_step(model, "ranking", 1.0, pair_forward="concatenated")
    history = loop.train_loop(model, batches, step, lr=1e-3, seed=0, shard=distributed.shard_pairs,
                              evaluation=Evaluation(held_out, every=2))
    assert [r["step"] for r in history if "eval_loss" in r] == [2, 4]
    with torch.no_grad():  # the model after the last step, as the last evaluation saw it
        per_batch = [(int(b["chosen_score"].shape[0]), step(b)) for b in held_out]
    expected = sum(n * float(loss) for n, (loss, _) in per_batch) / 4
    accuracy = sum(n * m["pair_accuracy"] for n, (_, m) in per_batch) / 4
    assert history[-1]["eval_loss"] == pytest.approx(expected, abs=1e-6)
    assert history[-1]["eval_pair_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_keep_best_ends_with_the_weights_of_the_best_evaluated_step(tmp_path):
    cfg, batches, held_out = pair_setup()
    runs = {}
    for keep, max_steps in (("best", 0), ("last", None)):
        model = tiny_student()
        step = calibration_step(model, "ranking", 1.0, pair_forward="concatenated")
        # mode=max on eval_loss: the worst held-out loss, so that "best" is not simply the last step
        evaluation = Evaluation(held_out, every=1, metric="eval_loss", mode="max", keep=keep)
        if max_steps is None:
            max_steps = runs["best"][0]["step"]
        history = loop.train_loop(model, batches, step, lr=3e-2, schedule="constant", max_steps=max_steps, seed=0,
                                  shard=distributed.shard_pairs, evaluation=evaluation, checkpoint_dir=tmp_path / keep)
        runs[keep] = (evaluation.best_row(history), model.state_dict(), history)
    best_row, best_weights, history = runs["best"]
    assert best_row["eval_loss"] == max(r["eval_loss"] for r in history) and best_row["step"] < len(history)
    _, truncated_weights, _ = runs["last"]  # a constant-rate run stopped at the best step
    assert max(float((best_weights[k] - truncated_weights[k]).abs().max()) for k in best_weights) <= 1e-6


def test_bad_evaluation_settings_are_refused():
    with pytest.raises(ValueError, match="keep best.last"):
        Evaluation([], every=1, keep="final")
    model = small_llama()
    with pytest.raises(ValueError, match="needs a checkpoint_dir"):
        loop.train_loop(model, [text_batch([3])], sft_step(model), lr=1e-3,
                        evaluation=Evaluation([text_batch([3])], every=1, keep="best"))
