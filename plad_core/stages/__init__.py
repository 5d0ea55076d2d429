"""The pipeline's stages as plain functions: ``run_<stage>(cfg, store, *upstream) -> Artifact``.

Each stage names the config paths it reads (its slice, ``keys``) and a code version; with the
upstream artifact keys these make its artifact key (see ``plad_core.artifacts``). ``dag.STAGES``
declares the graph once. Nothing here knows Prefect: ``flows/distill.py`` wraps these functions as
tasks, and ``run_stage`` resolves the same DAG for plain Python callers and ``plad stage``.

One module per concern: ``data``, ``student``, ``teacher``, ``sampling``, ``pairs``, ``curate``, ``calibrate``, ``evaluate``
and ``promote`` hold the runners; ``keys`` what enters the keys, ``inputs`` how a stage reads its
upstream artifacts, ``checks`` the fail-fast settings checks.
"""

from plad_core.stages.calibrate import calibrate_student, run_calibrate
from plad_core.stages.checks import check_train_loss
from plad_core.stages.curate import run_curate_pairs
from plad_core.stages.dag import (
           DEPENDENCIES,
           RUNNERS,
           STAGES,
           Stage,
           run_stage,
)
from plad_core.stages.data import run_prepare_data
from plad_core.stages.evaluate import run_dev_outputs, run_evaluate, run_judgments
from plad_core.stages.inputs import dev_frames, read_split
from plad_core.stages.pairs import run_build_pairs, run_score_pairs
from plad_core.stages.promote import run_promote
from plad_core.stages.sampling import (
           run_sample_student,
           run_sample_teacher,
           sampling_jobs,
)
from plad_core.stages.student import run_init_student, run_sft_student
from plad_core.stages.teacher import run_sft_teacher, teacher_model_spec

__all__ = ["DEPENDENCIES", "RUNNERS", "STAGES", "Stage", "calibrate_student", "check_train_loss",
           "dev_frames", "read_split", "run_build_pairs", "run_calibrate", "run_curate_pairs", "run_dev_outputs", "run_evaluate",
           "run_init_student", "run_judgments", "run_prepare_data", "run_promote", "run_sample_student",
           "run_sample_teacher", "run_score_pairs", "run_sft_student", "run_sft_teacher", "run_stage", "sampling_jobs",
           "teacher_model_spec"]
