# shim: removed after the layout merge
from plad_core.losses import (KD_DIVERGENCES, LOSS_NAMES, PAIR_LOSSES, REFERENCE_COLUMNS, STORED_SCORERS,  # noqa: F401
                              TEACHER_COLUMNS, PairLogps, check_loss, stored_columns)
from plad_core.training.batches import Encoded, collate, encode, length_grouped_batches  # noqa: F401
from plad_core.training.held_out import Evaluation  # noqa: F401
from plad_core.training.logprobs import (PAIR_FORWARDS, check_pair_forward, chosen_rows, scored_logits,  # noqa: F401
                                         sequence_logprobs)
from plad_core.training.loop import optim_kwargs, perplexity, train_loop  # noqa: F401
from plad_core.training.steps import StepFn, calibration_step, distill_step, sft_step, token_kd_step  # noqa: F401
