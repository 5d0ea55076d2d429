# shim: removed after the layout merge
from plad_core.evaluation.judge import (CANDIDATES, JUDGMENT_COLUMNS, REFERENCE, VERDICT_TOKENS,  # noqa: F401
                                        HFJudge, Judge, JudgeError, JudgePrompt, OpenAIJudge, Verdict,
                                        judge_systems, make_judge, opponents, pair_outcomes, parse_verdict,
                                        prompt_path, win_rates)
