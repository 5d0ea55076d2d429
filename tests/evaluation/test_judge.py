"""The pairwise judge: win-rate aggregation with swapped orders and ties (a scripted judge, hand-computed
rates), verdict parsing, prompt checks, the hf judge on a tiny model (loaded with the teacher's settings when it
is the teacher, refusing pickle weights otherwise) and the openai judge on the real server."""

import math

import pandas as pd
import pytest
import torch

from plad_core.config import CONF_DIR
from plad_core.data import TASKS
from plad_core.evaluation.judge import (
    HFJudge,
    JudgeError,
    JudgeLoad,
    JudgePrompt,
    judge_load,
    judge_systems,
    make_judge,
    opponents,
    win_rates,
)
from plad_core.evaluation.judge_api import OpenAIJudge, Verdict, parse_verdict
from plad_core.progress import Steps
from plad_core.stats import bootstrap_ci

ROWS = ["r1", "r2", "r3", "r4"]
# what the scripted judge does for each (system, opponent, row): prefer the system in both orders (win), the
# opponent in both (loss), always answer A or B whatever the order (a tie), or give an unreadable answer
# when the system stands at A and prefer the system when it stands at B (a tie)
SCRIPT = {("plad", "reference"): ["win", "loss", "always_A", "unreadable"],
          ("sft", "reference"): ["loss", "loss", "loss", "win"],
          ("plad", "sft"): ["win", "win", "win", "always_B"]}


class ScriptedJudge:
    """Reads the two candidates ("<system>:<row>") from the suffix and answers as SCRIPT says."""

    def __init__(self):
        self.requests = []

    def verdicts(self, requests, progress=None):
        self.requests += requests
        out = []
        for _, suffix in requests:
            a, b = suffix.split("|")
            (name_a, row), name_b = a.split(":"), b.split(":")[0]
            opponent = "reference" if "reference" in (name_a, name_b) else "sft"
            system = name_b if name_a == opponent else name_a
            system_at = "A" if name_a == system else "B"
            other = "B" if system_at == "A" else "A"
            plan = SCRIPT[(system, opponent)][ROWS.index(row)]
            choice = {"win": system_at, "loss": other, "always_A": "A", "always_B": "B",
                      "unreadable": None if system_at == "A" else system_at}[plan]
            out.append(Verdict(choice, raw=str(choice)))
        if progress:
            progress(1.0)
        return out


@pytest.fixture(scope="module")
def judged():
    generations = pd.DataFrame([{"system": s, "id": r, "text": f"{s}:{r}"} for s in ("sft", "plad") for r in ROWS])
    prompt = JudgePrompt("scripted", "{id}|", "{output_a}|{output_b}")
    judge = ScriptedJudge()
    judgments = judge_systems(judge, prompt, {r: f"{r}|" for r in ROWS}, {r: f"reference:{r}" for r in ROWS},
                              generations)
    return judge, judgments


def test_every_pair_is_judged_in_both_orders(judged):
    judge, judgments = judged
    assert opponents(["sft", "plad"]) == [("sft", "reference"), ("plad", "reference"), ("plad", "sft")]
    assert len(judge.requests) == len(judgments) == 4 * 3 * 2
    assert judge.requests[0] == ("r1|", "sft:r1|reference:r1") and judge.requests[1] == ("r1|", "reference:r1|sft:r1")
    per_pair = judgments.groupby(["system", "opponent", "id"])["system_position"].apply(sorted)
    assert all(p == ["A", "B"] for p in per_pair) and len(per_pair) == 12


def test_win_rates_with_swaps_and_ties_by_hand(judged):
    _, judgments = judged
    w = win_rates(judgments, n_resamples=1000, seed=0)
    plad_ref, sft_ref, plad_sft = w["vs"]["reference"]["plad"], w["vs"]["reference"]["sft"], w["vs"]["sft"]["plad"]
    # plad vs reference: win, loss, tie (always A), tie (unreadable) -> (1 + 0.5 * 2) / 4
    assert (plad_ref["wins"], plad_ref["ties"], plad_ref["losses"], plad_ref["n"]) == (1, 2, 1, 4)
    assert plad_ref["win_rate"] == 50.0 and plad_ref["consistency"] == 50.0
    # sft vs reference: three losses and a win -> 1 / 4
    assert (sft_ref["wins"], sft_ref["ties"], sft_ref["losses"]) == (1, 0, 3)
    assert sft_ref["win_rate"] == 25.0 and sft_ref["consistency"] == 100.0
    # plad vs sft: three wins and a tie (always B) -> (3 + 0.5) / 4
    assert (plad_sft["wins"], plad_sft["ties"], plad_sft["losses"]) == (3, 1, 0)
    assert plad_sft["win_rate"] == 87.5 and plad_sft["consistency"] == 75.0
    assert "sft" not in w["vs"]["sft"]  # SFT is not judged against itself
    # the CI is the seeded bootstrap of the per-row scores (rows in id order)
    ci = bootstrap_ci([1.0, 0.0, 0.5, 0.5], 1000, 0)
    assert (plad_ref["win_rate_low"], plad_ref["win_rate_high"]) == (round(100 * ci.low, 2), round(100 * ci.high, 2))
    assert plad_ref["win_rate_low"] <= 50.0 <= plad_ref["win_rate_high"] and plad_ref["win_rate_low"] < 50.0
    # diagnostics: 9 of 12 pairs consistent; 11 of 23 readable verdicts chose A; 1 unreadable of 24
    assert w["consistency"] == 75.0 and w["a_rate"] == round(100 * 11 / 23, 2)
    assert (w["unreadable"], w["judgments"]) == (1, 24)
    assert win_rates(judgments, 1000, 0) == w


def test_parse_verdict():
    assert [parse_verdict(t) for t in ("A", " B", "Summary A.", "**B** is better", "B. Summary A is vague",
                                       "Answer: A")] == ["A", "B", "A", "B", "B", "A"]
    assert parse_verdict("Both are fine") is None and parse_verdict("") is None and parse_verdict("AB") is None


def test_prompt_files_load_and_bad_templates_fail_clearly(tmp_path):
    tldr = JudgePrompt.load(CONF_DIR / "judge" / "tldr.txt", TASKS["tldr"].fields)
    assert "{post}" in tldr.prefix and tldr.suffix.startswith("{output_a}") and "{output_b}" in tldr.suffix
    hh = JudgePrompt.load(CONF_DIR / "judge" / "hh.txt", TASKS["hh"].fields)
    assert "{prompt}" in hh.prefix
    bad = {"unknown": ("{post} {body} {output_a} {output_b}", "unknown field"),
           "order": ("{post} {output_b} {output_a}", "then {output_b}"),
           "missing": ("{post} {output_a}", "then {output_b}"),
           "late": ("{output_a} {post} {output_b}", "before {output_a}"),
           "braces": ("{post} {output_a} {output_b} {", "not a valid format template")}
    for name, (text, message) in bad.items():
        (tmp_path / f"{name}.txt").write_text(text)
        with pytest.raises(JudgeError, match=message) as err:
            JudgePrompt.load(tmp_path / f"{name}.txt", TASKS["tldr"].fields)
        assert f"{name}.txt" in str(err.value)
    with pytest.raises(JudgeError, match="not found"):
        JudgePrompt.load(tmp_path / "nope.txt", TASKS["tldr"].fields)


def test_steps_report_fractions_of_named_steps():
    calls = []
    steps = Steps(["generate", "judge", "report"], lambda f, m: calls.append((round(f, 4), m)))
    steps.report("generate")
    steps.within("judge")(0.5)
    steps.report("report")
    steps.done()
    assert calls == [(0.0, "generate (0%)"), (0.5, "judge (50%)"), (0.6667, "report (0%)"), (1.0, "done")]
    Steps(["a"], None).report("a")  # no callback: nothing to do


@pytest.mark.slow
def test_hf_judge_on_a_tiny_model_gives_valid_deterministic_verdicts(tmp_path):
    from tiny import CACHE, make_tiny_model

    from plad_core.models import load_model

    model, tokenizer = load_model(str(make_tiny_model(tmp_path / "judge", layers=2)), CACHE)
    judge = HFJudge(model, tokenizer)
    requests = [(f"POST: post {i}\n\n", f"Summary A: {a}\n\nSummary B: {b}\n\nA or B?")
                for i in range(2) for a, b in (("one two", "three"), ("three four five six", "one"))]
    fractions = []
    verdicts = judge.verdicts(requests, fractions.append)
    assert fractions == [0.5, 1.0]  # one report per shared prefix
    assert all(v.choice in ("A", "B") and v.choice == ("A" if v.logp_a >= v.logp_b else "B") for v in verdicts)
    assert all(v.logp_a < 0 and v.logp_b < 0 and math.isfinite(v.logp_a) for v in verdicts)
    assert judge.verdicts(requests) == verdicts
    # the prefix's cache, shared by a right-padded batch of suffixes of different lengths, gives the
    # log-probs of one unpadded forward pass over each whole prompt
    for request, verdict in zip(requests, verdicts):
        head, tail = judge._split(*request)
        with torch.inference_mode():
            logits = model(torch.tensor([judge._ids(head) + judge._ids(tail)])).logits[0, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        assert verdict.logp_a == pytest.approx(float(torch.logsumexp(logp[judge.ids["A"]], 0)), abs=1e-4)
        assert verdict.logp_b == pytest.approx(float(torch.logsumexp(logp[judge.ids["B"]], 0)), abs=1e-4)
    assert len({len(judge._ids(judge._split(*r)[1])) for r in requests}) == 2  # the batch was padded
    assert head.startswith("<|im_start|>") and tail.endswith("<|im_start|>assistant\n")  # the chat template


@pytest.mark.slow
def test_openai_judge_parses_the_servers_answers(tmp_path):
    import httpx
    from sampling.fault_server import serve
    from tiny import make_tiny_model

    from plad_core.sampling.openai_api import ApiSettings

    model = make_tiny_model(tmp_path / "tiny", layers=2)
    with serve(model, tmp_path / "server.log") as base_url:
        settings = ApiSettings(base_url=base_url, model=str(model), mode="chat", concurrency=2, max_retries=0)
        requests = [("POST: a post\n\n", f"Summary A: {a}\n\nSummary B: {b}") for a, b in (("x", "y"), ("y", "x"))]
        verdicts = OpenAIJudge(settings, seed=0).verdicts(requests)
        state = httpx.get(base_url.removesuffix("/v1") + "/_test/state", timeout=10).json()
    assert state["requests"] == {"/v1/chat/completions": 2}
    assert all(v.choice == parse_verdict(v.raw) and math.isnan(v.logp_a) for v in verdicts)


def test_the_judge_takes_the_teachers_load_settings_only_when_it_is_the_teacher():
    from plad_core.config import load_config
    from plad_core.stages.keys import judge_identity

    teacher = ["teacher.model=org/judge-model", "teacher.revision=abc123", "teacher.trust_remote_code=true",
               "teacher.use_safetensors=false"]
    cfg = load_config("base", teacher)  # eval.judge.model is ${teacher.model}
    assert judge_load(cfg.eval.judge, cfg.teacher) == JudgeLoad("abc123", True, False)
    assert judge_identity(cfg)["model"] == {"spec": "org/judge-model", "revision": "abc123"}
    other = load_config("base", teacher + ["eval.judge.model=org/other-judge"])
    assert judge_load(other.eval.judge, other.teacher) == JudgeLoad(None, False, True)
    assert judge_identity(other)["model"] == {"spec": "org/other-judge", "revision": None}


@pytest.mark.slow
def test_the_hf_judge_refuses_pickle_weights_unless_the_teacher_allows_them(tmp_path):
    from sampling.pickle_model import make_bin_only_model
    from tiny import CACHE

    from plad_core.config import load_config

    bin_only = make_bin_only_model(tmp_path / "bin-only", layers=2)
    other = make_bin_only_model(tmp_path / "other-bin-only", layers=2, seed=1)

    def judge_for(*overrides):
        cfg = load_config("base", [f"teacher.model={bin_only}", *overrides])
        return make_judge(cfg.eval.judge, CACHE, "cpu", "float32", 0, judge_load(cfg.eval.judge, cfg.teacher))

    refused = r"eval.judge.model: .*holds no \*.safetensors weights, only pickle checkpoints \(pytorch_model.bin\)"
    with pytest.raises(JudgeError, match=refused + ".*set teacher.use_safetensors=false"):
        judge_for()
    # a judge model that is not the teacher's loads safetensors only, whatever the teacher allows
    with pytest.raises(JudgeError, match=refused):
        judge_for("teacher.use_safetensors=false", f"eval.judge.model={other}")
    judge, counter = judge_for("teacher.use_safetensors=false")  # the teacher's model, as the teacher loads it
    weights = torch.load(bin_only / "pytorch_model.bin", weights_only=True)
    loaded = judge.model.state_dict()
    assert isinstance(judge, HFJudge) and counter is judge.tokenizer
    assert all(torch.equal(loaded[name].float(), tensor.float()) for name, tensor in weights.items())
