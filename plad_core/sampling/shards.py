"""Resumable sharded sampling: shards of prompts committed atomically, skipped on restart."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plad_core.sampling.hf import Generation
from plad_core.sampling.schema import SAMPLES_SCHEMA

log = logging.getLogger("plad.sampling")

GenerateFn = Callable[[list[str], int], list[Generation]]


def shard_seed(seed: int, shard_index: int) -> int:
    """Each shard has its own seed, so a resumed run samples a shard exactly as a fresh run would."""
    return seed * 1_000_003 + shard_index


def sample_sharded(ids: Sequence[str], prompts: Sequence[str], generate_fn: GenerateFn, meta: dict[str, Any],
                   seed: int, shard_size: int, work_dir: Path, out_path: Path,
                   earlier: Optional[pd.DataFrame] = None) -> dict[str, Any]:
    """Generate for every prompt, shard by shard, then write one Parquet file at ``out_path``.

    ``meta`` fills the constant columns (backend, model, temperature, top_p, max_new_tokens).
    Finished shards in ``work_dir`` (from a killed earlier attempt) are kept, not redone.
    ``earlier`` holds samples from the same model and settings on other data (a previous night's
    prompts): rows whose id and exact prompt recur are reused instead of generated again.
    """
    reused = pa.table({name: [] for name in SAMPLES_SCHEMA.names}, schema=SAMPLES_SCHEMA)
    if earlier is not None and not earlier.empty:
        wanted = dict(zip(ids, prompts))
        match = earlier[earlier["id"].map(wanted) == earlier["prompt"]].drop_duplicates(["id", "sample_index"])
        reused = pa.Table.from_pandas(match, schema=SAMPLES_SCHEMA, preserve_index=False)
        todo = [k for k, row_id in enumerate(ids) if row_id not in set(match["id"])]
        ids, prompts = [ids[k] for k in todo], [prompts[k] for k in todo]
    n_shards = (len(ids) + shard_size - 1) // shard_size
    resumed = 0
    for shard in range(n_shards):
        path = work_dir / f"shard-{shard:05d}.parquet"
        if path.is_file():
            resumed += 1
            continue
        lo, hi = shard * shard_size, min(len(ids), (shard + 1) * shard_size)
        seed_here = shard_seed(seed, shard)
        generations = generate_fn(list(prompts[lo:hi]), seed_here)
        rows = [{"id": ids[lo + g.prompt_index], "sample_index": g.sample_index, "prompt": prompts[lo + g.prompt_index],
                 "text": g.text, "prompt_tokens": g.prompt_tokens, "output_tokens": g.output_tokens,
                 "finish_reason": g.finish_reason, "seed": seed_here, **meta} for g in generations]
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), tmp)
        os.replace(tmp, path)
        log.info("shard %d/%d committed (%d rows)", shard + 1, n_shards, len(rows))
    if resumed:
        log.info("resumed: %d of %d shards were already done", resumed, n_shards)
    table = pa.concat_tables([reused] + [pq.read_table(work_dir / f"shard-{s:05d}.parquet", schema=SAMPLES_SCHEMA)
                                         for s in range(n_shards)])
    keys = list(zip(table.column("id").to_pylist(), table.column("sample_index").to_pylist()))
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"{work_dir}: duplicate (id, sample_index) rows across shards")
    pq.write_table(table, out_path)
    return {"rows": table.num_rows, "generated_prompts": len(ids), "reused_rows": reused.num_rows,
            "shards": n_shards, "resumed_shards": resumed,
            "finish_length": int(sum(r == "length" for r in table.column("finish_reason").to_pylist()))}
