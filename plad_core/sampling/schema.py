"""The Parquet schema every sampling backend writes: one row per (prompt id, sample index)."""

import pyarrow as pa

SAMPLES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("prompt_tokens", pa.int32(), nullable=False),
    pa.field("output_tokens", pa.int32(), nullable=False),
    pa.field("finish_reason", pa.string(), nullable=False),  # "stop" (EOS or stop string) or "length"
    pa.field("backend", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("temperature", pa.float32(), nullable=False),
    pa.field("top_p", pa.float32(), nullable=False),
    pa.field("max_new_tokens", pa.int32(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
])
