"""Resumable sharded sampling: shards of prompts committed atomically, skipped on restart.

``plan_shards`` splits the prompts still to sample into shards with their own seeds,
``write_shard`` commits one shard's rows, ``merge_shards`` writes the final Parquet file from the
committed shards. ``sample_sharded`` does all three in this process; the flow can instead run the
shards as separate tasks on a Dask cluster (``plad_core.sampling.samplers.ShardJob``) and merge after.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plad_core.sampling.generation import Generation
from plad_core.sampling.schema import SAMPLES_SCHEMA

log = logging.getLogger("plad.sampling")

GenerateFn = Callable[[list[str], int], list[Generation]]


def shard_seed(seed: int, shard_index: int) -> int:
    """Each shard has its own seed, so a resumed run samples a shard exactly as a fresh run would."""
    return seed * 1_000_003 + shard_index


@dataclass(frozen=True)
class Shard:
    index: int
    ids: tuple[str, ...]
    prompts: tuple[str, ...]
    seed: int

    def path(self, work_dir: Path) -> Path:
        return work_dir / f"shard-{self.index:05d}.parquet"


@dataclass(frozen=True)
class ShardPlan:
    shards: tuple[Shard, ...]
    reused: pa.Table          # rows of earlier samples kept as they are (same id, same prompt)


def plan_shards(ids: Sequence[str], prompts: Sequence[str], seed: int, shard_size: int,
                earlier: Optional[pd.DataFrame] = None) -> ShardPlan:
    """Shards of ``shard_size`` prompts, after taking out the ids whose exact prompt ``earlier`` has
    samples for (from the same model and settings on other data, e.g. a previous night's prompts)."""
    reused = pa.table({name: [] for name in SAMPLES_SCHEMA.names}, schema=SAMPLES_SCHEMA)
    if earlier is not None and not earlier.empty:
        wanted = dict(zip(ids, prompts))
        match = earlier[earlier["id"].map(wanted) == earlier["prompt"]].drop_duplicates(["id", "sample_index"])
        reused = pa.Table.from_pandas(match, schema=SAMPLES_SCHEMA, preserve_index=False)
        done = set(match["id"])
        todo = [k for k, row_id in enumerate(ids) if row_id not in done]
        ids, prompts = [ids[k] for k in todo], [prompts[k] for k in todo]
    shards = tuple(Shard(s, tuple(ids[lo:lo + shard_size]), tuple(prompts[lo:lo + shard_size]), shard_seed(seed, s))
                   for s, lo in enumerate(range(0, len(ids), shard_size)))
    return ShardPlan(shards, reused)


def write_shard(work_dir: Path, shard: Shard, generations: list[Generation], meta: dict[str, Any]) -> Path:
    """Commit one shard's rows atomically (a temporary file renamed into place); returns its path."""
    rows = [{"id": shard.ids[g.prompt_index], "sample_index": g.sample_index, "prompt": shard.prompts[g.prompt_index],
             "text": g.text, "prompt_tokens": g.prompt_tokens, "output_tokens": g.output_tokens,
             "finish_reason": g.finish_reason, "seed": shard.seed, **meta} for g in generations]
    path = shard.path(work_dir)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), tmp)
    os.replace(tmp, path)
    return path


def merge_shards(plan: ShardPlan, work_dir: Path, out_path: Path) -> dict[str, Any]:
    """Write the reused rows and every committed shard of ``plan`` as one Parquet file at ``out_path``."""
    missing = [str(s.path(work_dir)) for s in plan.shards if not s.path(work_dir).is_file()]
    if missing:
        raise RuntimeError(f"{work_dir}: {len(missing)} of {len(plan.shards)} shards are not committed: {missing[:3]}")
    table = pa.concat_tables([plan.reused] + [pq.read_table(s.path(work_dir), schema=SAMPLES_SCHEMA)
                                              for s in plan.shards])
    keys = list(zip(table.column("id").to_pylist(), table.column("sample_index").to_pylist()))
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"{work_dir}: duplicate (id, sample_index) rows across shards")
    pq.write_table(table, out_path)
    return {"rows": table.num_rows, "generated_prompts": sum(len(s.ids) for s in plan.shards),
            "reused_rows": plan.reused.num_rows, "shards": len(plan.shards),
            "finish_length": int(sum(r == "length" for r in table.column("finish_reason").to_pylist()))}


def sample_sharded(ids: Sequence[str], prompts: Sequence[str], generate_fn: GenerateFn, meta: dict[str, Any],
                   seed: int, shard_size: int, work_dir: Path, out_path: Path,
                   earlier: Optional[pd.DataFrame] = None) -> dict[str, Any]:
    """Generate for every prompt, shard by shard, then write one Parquet file at ``out_path``.

    ``meta`` fills the constant columns (backend, model, temperature, top_p, max_new_tokens).
    Finished shards in ``work_dir`` (from a killed earlier attempt, or run elsewhere as
    ``ShardJob``s) are kept, not redone. ``earlier``: see ``plan_shards``.
    """
    plan = plan_shards(ids, prompts, seed, shard_size, earlier)
    resumed = 0
    for shard in plan.shards:
        if shard.path(work_dir).is_file():
            resumed += 1
            continue
        write_shard(work_dir, shard, generate_fn(list(shard.prompts), shard.seed), meta)
        log.info("shard %d/%d committed", shard.index + 1, len(plan.shards))
    if resumed:
        log.info("resumed: %d of %d shards were already done", resumed, len(plan.shards))
    return {**merge_shards(plan, work_dir, out_path), "resumed_shards": resumed}
