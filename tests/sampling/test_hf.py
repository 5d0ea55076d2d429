from types import SimpleNamespace

import pyarrow.parquet as pq
import torch
from tiny import make_tiny_model
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from plad_core.models import load_model
from plad_core.sampling.generation import Generation
from plad_core.sampling.hf import (
    MIN_SHARED_PREFIX,
    decode_attention,
    generate,
    shared_prefix_length,
)
from plad_core.sampling.shards import sample_sharded, shard_seed

META = {"backend": "hf", "model": "m", "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8}


def fake_generate(calls):
    def gen(prompts, seed):
        calls.append((tuple(prompts), seed))
        return [Generation(i, 0, f"{p}->{seed}", 3, 2, "stop") for i, p in enumerate(prompts)]
    return gen


def test_shards_resume_without_redoing_or_duplicating(tmp_path):
    ids = [f"id{i}" for i in range(7)]
    prompts = [f"p{i}" for i in range(7)]
    work = tmp_path / "work"
    work.mkdir()
    calls = []
    sample_sharded(ids, prompts, fake_generate(calls), META, 5, 3, work, tmp_path / "full.parquet")
    uninterrupted = pq.read_table(tmp_path / "full.parquet").to_pylist()
    assert len(calls) == 3 and [c[1] for c in calls] == [shard_seed(5, s) for s in range(3)]

    # a run killed after its first shard: only shard 0 is on disk
    resumed_work = tmp_path / "resumed"
    resumed_work.mkdir()
    (resumed_work / "shard-00000.parquet").write_bytes((work / "shard-00000.parquet").read_bytes())
    calls2 = []
    stats = sample_sharded(ids, prompts, fake_generate(calls2), META, 5, 3, resumed_work, tmp_path / "resumed.parquet")
    assert [c[0] for c in calls2] == [("p3", "p4", "p5"), ("p6",)]
    assert stats["resumed_shards"] == 1 and stats["rows"] == 7
    assert pq.read_table(tmp_path / "resumed.parquet").to_pylist() == uninterrupted
    assert [r["id"] for r in uninterrupted] == ids


def test_hf_generate_is_seeded_and_returns_input_order(tmp_path):
    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "m")), tmp_path)
    prompts = ["TL;DR: a much longer prompt than the others, with words", "short", "medium length prompt"]
    kwargs = dict(n=2, temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=2, seed=3)
    first, second = generate(model, tokenizer, prompts, **kwargs), generate(model, tokenizer, prompts, **kwargs)
    assert [(g.prompt_index, g.sample_index) for g in first] == [(i, j) for i in range(3) for j in range(2)]
    assert [g.text for g in first] == [g.text for g in second]
    assert [g.prompt_tokens for g in first[::2]] == [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert all(g.finish_reason in ("stop", "length") for g in first)
    greedy = generate(model, tokenizer, prompts[:1], temperature=0.0, max_new_tokens=6)
    with torch.inference_mode():
        ids = tokenizer(prompts[0], return_tensors="pt")
        reference = model.generate(**ids, max_new_tokens=6, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert greedy[0].text == tokenizer.decode(reference, skip_special_tokens=True).strip()


def test_earlier_samples_are_reused_for_recurring_ids_with_the_same_prompt(tmp_path):
    work = tmp_path / "night1"
    work.mkdir()
    sample_sharded(["a", "b"], ["pa", "pb"], fake_generate([]), META, 0, 8, work, tmp_path / "night1.parquet")
    earlier = pq.read_table(tmp_path / "night1.parquet").to_pandas()
    calls = []
    (tmp_path / "night2").mkdir()
    stats = sample_sharded(["a", "b", "c"], ["pa", "pb CHANGED", "pc"], fake_generate(calls), META, 0, 8,
                           tmp_path / "night2", tmp_path / "night2.parquet", earlier)
    assert [c[0] for c in calls] == [("pb CHANGED", "pc")]           # only new or changed prompts are sampled
    assert stats["reused_rows"] == 1 and stats["generated_prompts"] == 2 and stats["rows"] == 3
    rows = {r["id"]: r["text"] for r in pq.read_table(tmp_path / "night2.parquet").to_pylist()}
    assert rows["a"] == earlier.loc[earlier["id"] == "a", "text"].item()


def generate_reference(model, tokenizer, encoded, **sampling):
    """transformers' own generate on the length-sorted, left-padded batch (each prompt run n=2 times)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": [encoded[i] for i in order]}, return_tensors="pt")
    torch.manual_seed(4)
    with torch.inference_mode():
        out = model.generate(**batch, num_return_sequences=2, do_sample=True, pad_token_id=tokenizer.pad_token_id,
                             **sampling)
    return {(order[row // 2], row % 2): tokenizer.decode(t, skip_special_tokens=True).strip()
            for row, t in enumerate(out[:, batch["input_ids"].shape[1]:])}


def test_no_prompt_token_is_computed_twice_and_the_samples_are_generates_own(tmp_path):
    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "m")), tmp_path)
    examples = "SUBREDDIT: r/x\n\nPOST: " + " ".join(f"word{i}" for i in range(40)) + "\n\nTL;DR: a summary"
    lengths = (1, 7, 3, 12, 5)
    sampling = dict(temperature=1.0, top_p=0.95, max_new_tokens=8)
    for shares_examples in (True, False):
        prompts = [(f"{examples}\n\n###\n\n" if shares_examples else f"{k} ") + f"POST: {'more ' * k}\n\nTL;DR:"
                   for k in lengths]
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        shared = shared_prefix_length(encoded)
        assert (MIN_SHARED_PREFIX <= shared < min(map(len, encoded))) == shares_examples
        passes = []
        hook = model.register_forward_pre_hook(lambda m, args, kw: passes.append(tuple(kw["input_ids"].shape)),
                                               with_kwargs=True)
        gens = generate(model, tokenizer, prompts, n=2, batch_size=5, seed=4, **sampling)
        hook.remove()
        longest = max(map(len, encoded))
        # the shared prefix alone once (if any); each prompt's rest once, all but its last token; the 10 sample rows
        assert passes[:3] == ([(1, shared), (5, longest - shared - 1), (10, 1)] if shares_examples
                              else [(5, longest - 1), (10, 1), (10, 1)])
        assert {(g.prompt_index, g.sample_index): g.text for g in gens} == \
            generate_reference(model, tokenizer, encoded, **sampling)
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2 and shared_prefix_length([[1, 2], [3]]) == 0


def test_decode_attention_equals_sdpa_for_one_token_queries_with_padding_and_grouped_heads():
    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)  # 9 query heads on 3 key/value heads
    query, key, value = torch.randn(4, 9, 1, 64), torch.randn(4, 3, 20, 64), torch.randn(4, 3, 20, 64)
    mask = torch.ones(4, 1, 1, 20, dtype=torch.bool)
    mask[0, ..., :5] = False   # left padding of different lengths
    mask[2, ..., :12] = False
    ours, _ = decode_attention(module, query, key, value, mask, scaling=0.125)
    reference, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)
    assert ours.shape == reference.shape == (4, 1, 9, 64)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    ours, _ = decode_attention(module, query, key, value, None)
    torch.testing.assert_close(ours, sdpa_attention_forward(module, query, key, value, None)[0], atol=1e-5, rtol=1e-5)
