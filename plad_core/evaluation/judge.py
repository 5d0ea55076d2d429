"""Pairwise win rates from a judge model, each pair judged in both orders, and the prompts and judges
that give the verdicts.

For a dev row, a system's output and an opponent's (the human reference, or the SFT student's
output) are shown to the judge twice: once with the system's output as candidate A, once as B (the
order swap of Zheng et al., 2023, "Judging LLM-as-a-judge", Sec. 3.4, against position bias). The
pair's score, 1 (win), 0.5 (tie) or 0 (loss), is position-debiased (``plad_core.evaluation.judge_scores``):
for the hf judge, from the two orders' log-odds of the system's letter over the opponent's, summed,
so that a pure position bias cancels (plad's rule); for a text judge, a win only when both readable
verdicts name the system, a loss when both name the opponent, a tie otherwise. Over n rows,

    win rate = (wins + 0.5 · ties) / n,

with a 95% percentile-bootstrap CI over rows (``plad_core.stats.bootstrap_ci``), as in the
pairwise-preference protocol of AlpacaEval and of the PLaD paper's win-rate tables (Zhang et al.,
2024, arXiv:2406.02886, Sec. 4). Diagnostics: the *position consistency* is the share of pairs whose
two verdicts name the same candidate (a judge that always answers "A" has 0%), the *A-rate* the share
of verdicts that chose A. Every evaluation also judges cases whose answer is known
(``plad_core.evaluation.judge_validity``) to say whether the win rates are evidence at all.

The judge prompt is a text file (``eval.judge.prompt``, under ``conf/judge/``) holding the user's
turn: Python format fields from the task's row (``{post}``, ``{title}``, ``{prompt}``, ...) and the
two candidates ``{output_a}`` then ``{output_b}``. Everything before ``{output_a}`` is the row's
*prefix*, the same for all of the row's judgments.

Judges (each turns (prefix, suffix) requests into ``Verdict``s):

* ``HFJudge``: a local model. The prompt goes through the tokenizer's chat template when it has one
  (the prompt is the user's turn; the answer is the assistant's first token); the verdict compares
  the log-probabilities of "A" and "B" as that next token (with or without a leading space): one
  forward pass, no sampling, so it is deterministic and always readable. The prefix runs once per
  row and its key/value cache serves all of the row's suffixes, in one batch.
* ``OpenAIJudge`` (``plad_core.evaluation.judge_api``): an OpenAI-compatible endpoint, greedy; the
  verdict is parsed from the text.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import torch

from plad_core import data as data_lib
from plad_core import models
from plad_core.config import CONF_DIR
from plad_core.evaluation.judge_api import Judge, OpenAIJudge, ProgressFn, Verdict
from plad_core.evaluation.judge_scores import pair_outcomes, win_rates  # noqa: F401  (the judge's results, here too)
from plad_core.sampling import openai_api
from plad_core.sampling.vllm_backend import check_weights

CANDIDATES = ("output_a", "output_b")
REFERENCE = "reference"  # the opponent name of the human reference


class JudgeError(ValueError):
    """A judge prompt file or judge setting that cannot be used."""


# --- the prompt ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgePrompt:
    """A judge prompt template split at ``{output_a}``: ``prefix`` (row fields only) and ``suffix``."""
    path: str
    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.suffix

    @classmethod
    def load(cls, path: Path, row_fields: Sequence[str]) -> "JudgePrompt":
        """Read and check a template: ``{output_a}`` and ``{output_b}`` once each, A first, and no
        other field than ``row_fields``."""
        if not path.is_file():
            raise JudgeError(f"eval.judge.prompt: {path} not found (judge prompts live in conf/judge/)")
        text = path.read_text(encoding="utf-8")
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
        except ValueError as err:
            raise JudgeError(f"{path}: not a valid format template ({err}); write literal braces as {{{{ }}}}") from None
        unknown = sorted({n for n in names if n not in CANDIDATES and n not in row_fields})
        if unknown:
            raise JudgeError(f"{path}: unknown field(s) {unknown}; a judge prompt may use {sorted(row_fields)} "
                             f"and {list(CANDIDATES)}")
        if [n for n in names if n in CANDIDATES] != list(CANDIDATES):
            raise JudgeError(f"{path}: needs {{output_a}} and then {{output_b}}, once each")
        if names.index("output_a") != len(names) - 2:
            raise JudgeError(f"{path}: row fields must all come before {{output_a}} (the part every judgment "
                             f"of a row shares); found {names[names.index('output_a'):]}")
        cut = text.index("{output_a}")
        return cls(str(path), text[:cut], text[cut:])

    def fill_prefixes(self, rows: pd.DataFrame, tokenizer: Any, max_tokens: int, spec: data_lib.TaskSpec) -> dict[str, str]:
        """Row id -> the prefix filled with the row, its body (post, dialogue) cut so the prefix fits
        ``max_tokens`` of ``tokenizer`` (``plad_core.data.build_prompts``)."""
        prefixes, _ = data_lib.build_prompts(rows, tokenizer, self.prefix, [], "", max_tokens, spec)
        return dict(zip(rows["id"], prefixes))


def prompt_path(value: str) -> Path:
    """``eval.judge.prompt``: an absolute path, or one relative to conf/ (``judge/tldr.txt``)."""
    return Path(value) if Path(value).is_absolute() else CONF_DIR / value


# --- judges --------------------------------------------------------------------------------------

def _answer_ids(tokenizer: Any, letter: str) -> list[int]:
    ids = sorted({encoded[0] for variant in (letter, " " + letter)
                  if len(encoded := tokenizer(variant, add_special_tokens=False)["input_ids"]) == 1})
    if not ids:
        raise JudgeError(f"the judge's tokenizer has no single token for '{letter}' or ' {letter}'")
    return ids


class HFJudge:
    """Next-token log-probabilities of "A" vs "B" from a local causal LM (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model, tokenizer
        self.ids = {letter: _answer_ids(tokenizer, letter) for letter in "AB"}
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def _split(self, prefix: str, suffix: str) -> tuple[str, str]:
        """The full judge input as (prefix part, suffix part), through the chat template when there is one."""
        if not self.chat:
            return prefix, suffix
        marker = "\x00plad-judge-split\x00"
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": prefix + marker + suffix}],
                                                      tokenize=False, add_generation_prompt=True)
        head, tail = rendered.split(marker)
        return head, tail

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def verdicts(self, requests: Sequence[tuple[str, str]], progress: Optional[ProgressFn] = None) -> list[Verdict]:
        """Per distinct prefix: one forward pass over it, then one batched pass over all of its
        suffixes on the prefix's key/value cache (repeated per suffix), right-padded: a causal
        model never attends to the padding after a suffix, and each verdict is read at the
        suffix's last real token."""
        out: list[Optional[Verdict]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, (prefix, _) in enumerate(requests):
            groups.setdefault(prefix, []).append(i)
        device = self.model.get_input_embeddings().weight.device
        head_of = self.model.get_output_embeddings()
        done = 0
        for prefix, members in groups.items():
            head = torch.tensor([self._ids(self._split(prefix, requests[members[0]][1])[0])], device=device)
            cache = self.model(head, use_cache=True, logits_to_keep=1).past_key_values
            cache.batch_repeat_interleave(len(members))
            tails = [self._ids(self._split(prefix, requests[i][1])[1]) for i in members]
            ids = torch.full((len(tails), max(map(len, tails))), self.tokenizer.pad_token_id, device=device)
            for row, tail in enumerate(tails):
                ids[row, :len(tail)] = torch.tensor(tail)
            hidden = self.model.base_model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state
            last = hidden[torch.arange(len(tails), device=device), torch.tensor([len(t) - 1 for t in tails], device=device)]
            logp = torch.log_softmax(head_of(last).float(), dim=-1)
            for row, i in enumerate(members):
                a, b = (float(torch.logsumexp(logp[row, self.ids[letter]], dim=0)) for letter in "AB")
                out[i] = Verdict("A" if a >= b else "B", a, b)
            done += len(members)
            if progress:
                progress(done / len(requests))
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class JudgeLoad:
    """How the hf judge's model is loaded (``models.load_model``): by default no revision pin, no
    remote code and safetensors only."""
    revision: Optional[str] = None
    trust_remote_code: bool = False
    use_safetensors: bool = True


def judge_load(judge_cfg: Any, teacher_cfg: Any) -> JudgeLoad:
    """The teacher's ``revision``, ``trust_remote_code`` and ``use_safetensors`` when the judge model is
    the teacher's (``eval.judge.model`` is ``teacher.model``, its default); otherwise ``JudgeLoad()``:
    ``eval.judge`` has no such keys, so another model gets no pin, no remote code and no pickle weights."""
    if judge_cfg.model == teacher_cfg.model:
        return JudgeLoad(teacher_cfg.revision, teacher_cfg.trust_remote_code, teacher_cfg.use_safetensors)
    return JudgeLoad()


def make_judge(judge_cfg: Any, cache_dir: str, device: str, dtype: str, seed: int,
               load: JudgeLoad = JudgeLoad()) -> tuple[Judge, Any]:
    """The judge of ``eval.judge`` and the tokenizer that counts its prompt's tokens (for truncation):
    hf loads ``judge_cfg.model`` with ``load`` (``judge_load``) in ``dtype``; openai checks
    ``judge_cfg.api`` and loads nothing."""
    if judge_cfg.backend == "hf":
        try:
            check_weights(models.resolve_model_path(judge_cfg.model, cache_dir), load.use_safetensors,
                          "teacher.use_safetensors=false with eval.judge.model=${teacher.model} (a judge model "
                          "that is not the teacher's loads safetensors only)")
        except ValueError as err:
            raise JudgeError(f"eval.judge.model: {err}") from None
        model, tokenizer = models.load_model(judge_cfg.model, cache_dir, load.revision, load.trust_remote_code,
                                             load.use_safetensors, device)
        return HFJudge(models.cast(model, dtype), tokenizer), tokenizer
    if judge_cfg.backend == "openai":
        settings = openai_api.ApiSettings.from_config(judge_cfg.api).check("eval.judge.api")
        return OpenAIJudge(settings, seed), openai_api.CharTokens()
    raise JudgeError(f"eval.judge.backend='{judge_cfg.backend}' is not a judge backend; use hf or openai")


# --- judging systems -----------------------------------------------------------------------------

JUDGMENT_COLUMNS = ["id", "system", "opponent", "system_position", "verdict", "logp_a", "logp_b", "raw"]


def opponents(systems: Sequence[str]) -> list[tuple[str, str]]:
    """(system, opponent) pairs: every system against the human reference, and against the SFT
    student when it is evaluated (not SFT against itself)."""
    pairs = [(s, REFERENCE) for s in systems]
    if "sft" in systems:
        pairs += [(s, "sft") for s in systems if s != "sft"]
    return pairs


Request = tuple[tuple[str, str, str, str], tuple[str, str]]  # ((id, system, opponent, position), (prefix, suffix))


def ordered_requests(prompt: JudgePrompt, prefix: str, row_id: str, system: str, opponent: str,
                     mine: str, theirs: str) -> list[Request]:
    """The two judgments of one pair: the system's text ``mine`` as candidate A, then as B."""
    return [((row_id, system, opponent, position),
             (prefix, prompt.suffix.format(output_a=a, output_b=b)))
            for position, (a, b) in (("A", (mine, theirs)), ("B", (theirs, mine)))]


def system_requests(prompt: JudgePrompt, prefixes: dict[str, str], references: dict[str, str],
                    generations: pd.DataFrame) -> list[Request]:
    """Every (system, opponent) pair on every row of ``prefixes``, in both orders (see ``judge_systems``)."""
    texts = {(s, i): t for s, i, t in generations[["system", "id", "text"]].itertuples(index=False)}
    systems = list(generations["system"].unique())
    out: list[Request] = []
    for row_id, prefix in prefixes.items():
        candidates = {REFERENCE: references[row_id]}
        candidates.update({s: texts[(s, row_id)] for s in systems if (s, row_id) in texts})
        for system, opponent in opponents(systems):
            out += ordered_requests(prompt, prefix, row_id, system, opponent, candidates[system], candidates[opponent])
    return out


def judge_requests(judge: Judge, requests: Sequence[Request], progress: Optional[ProgressFn] = None) -> pd.DataFrame:
    """The judge's verdicts on ``requests`` in one call (rows sharing a prefix share its pass), as judgments."""
    verdicts = judge.verdicts([r for _, r in requests], progress) if requests else []
    return pd.DataFrame([(*m, v.choice, v.logp_a, v.logp_b, v.raw) for (m, _), v in zip(requests, verdicts)],
                        columns=JUDGMENT_COLUMNS)


def judge_systems(judge: Judge, prompt: JudgePrompt, prefixes: dict[str, str], references: dict[str, str],
                  generations: pd.DataFrame, progress: Optional[ProgressFn] = None) -> pd.DataFrame:
    """Every (system, opponent) pair on every row of ``prefixes``, in both orders.

    Args:
        prefixes: row id -> the prompt's prefix, filled with the row (``fill_prefixes``).
        references: row id -> the human reference.
        generations: system, id, text (one output per system and row).
    Returns:
        judgments (``JUDGMENT_COLUMNS``): one row per pair and order; ``system_position`` is where the
        system's output stood ("A" or "B"), ``verdict`` the judge's choice (None: unreadable).
    """
    return judge_requests(judge, system_requests(prompt, prefixes, references, generations), progress)
