# shim: removed after the layout merge
from plad_core.training.distributed import (PER_PAIR_KEY, STRATEGIES, Ranks, ShardFn, barrier,  # noqa: F401
                                            check_strategy, full_state, init_from_env, load_full_state, no_sync,
                                            ranks, shard_pairs, weighted_mean, wrap)
