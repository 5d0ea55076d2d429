"""Value checks run when a config loads: every leaf against its field's choices or range, every
prompt template against the task's fields, and the settings a teacher behind an API rules out."""

from __future__ import annotations

import dataclasses
import operator
import re
import string
from typing import Any, Iterator, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from plad_core.config.schema import CONF_DIR, JUDGE_CANDIDATES, ConfigError
from plad_core.data import TASKS

_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def _problem(value: Any, checks: dict[str, Any]) -> Optional[str]:
    """What is wrong with one leaf ``value`` by its field's ``checks``; None when nothing is."""
    if "choices" in checks and (str(value).lower() if checks.get("ignore_case") else value) not in checks["choices"]:
        return f"is not one of: {', '.join(map(str, checks['choices']))}"
    if "pattern" in checks and not re.fullmatch(checks["pattern"][0], str(value)):
        return f"is not {checks['pattern'][1]}"
    bounds = [(op, sym, checks[k]) for k, (op, sym) in _BOUNDS.items() if k in checks]
    if any(not op(value, b) for op, _, b in bounds) or value in checks.get("exclude", ()):
        return ("is out of range: must be " + " and ".join(f"{sym} {b}" for _, sym, b in bounds)
                + "".join(f", not {x}" for x in checks.get("exclude", ())))
    return None


def _leaf_problems(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, message) for every leaf under ``node`` that fails its field's checks (lists element-wise)."""
    for f in dataclasses.fields(OmegaConf.get_type(node)):
        path, value = prefix + f.name, node[f.name]
        if isinstance(value, DictConfig):
            yield from _leaf_problems(value, path + ".")
        elif f.metadata and value is not None:
            items = enumerate(value) if isinstance(value, ListConfig) else [(None, value)]
            for i, item in items:
                problem = _problem(item, f.metadata)
                if problem:
                    yield path, f"{path if i is None else f'{path}[{i}]'}={item!r} {problem}"


def template_problem(template: str, fields: Sequence[str]) -> Optional[str]:
    """What is wrong with a ``str.format`` template whose rows hold ``fields``; None when nothing is."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        return f"is not a valid format template ({err}); write literal braces as {{{{ }}}}"
    unknown = sorted({re.split(r"[.\[]", name)[0] for name in names} - set(fields))
    return f"uses unknown field(s) {unknown}; valid fields: {', '.join(fields)}" if unknown else None


def _template_problems(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    fields = TASKS[cfg.data.task].fields
    for side in ("teacher", "student"):
        problem = template_problem(cfg[side].prompt.template, fields)
        if problem:
            yield f"{side}.prompt.template", f"{side}.prompt.template {problem} (data.task={cfg.data.task})"
    if cfg.eval.judge.enabled:
        path = CONF_DIR / cfg.eval.judge.prompt  # an absolute prompt path stays itself
        problem = (template_problem(path.read_text(encoding="utf-8"), (*fields, *JUDGE_CANDIDATES)) if path.is_file()
                   else f"is not a file ({path}; judge prompts live in conf/judge/)")
        if problem:
            yield "eval.judge.prompt", f"eval.judge.prompt={cfg.eval.judge.prompt!r} {problem} (data.task={cfg.data.task})"


STUDENT_FROM_API_TEACHER = (
    "student.model is unset, but teacher.sampling.backend=openai: without it the student is cut from the "
    "teacher's layers, and a teacher behind an API has no weights here to cut; set student.model to the "
    "student's starting model (a local folder or hub id)")


def _api_teacher_problems(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    """With ``teacher.sampling.backend=openai`` nothing may load ``teacher.model`` locally: the student
    must be named, the judge must not default to the teacher (``${teacher.model}``), and the teacher
    cannot be fine-tuned (``teacher.sft.enabled`` true)."""
    if cfg.teacher.sampling.backend != "openai":
        return
    if cfg.teacher.sft.enabled is True:
        yield "teacher.sft.enabled", (
            "teacher.sft.enabled=true, but teacher.sampling.backend=openai puts the teacher behind an API, "
            "whose weights cannot be fine-tuned here: set teacher.sft.enabled=auto or false (an API teacher is used as is)")
    if not cfg.student.model:
        yield "student.model", STUDENT_FROM_API_TEACHER
    j = cfg.eval.judge
    if j.enabled and j.backend == "hf" and OmegaConf.to_container(j, resolve=False)["model"] == "${teacher.model}":
        yield "eval.judge.model", (
            "eval.judge.model is ${teacher.model} (its default), which the hf judge would load here, but "
            "teacher.sampling.backend=openai puts the teacher behind an API: set eval.judge.model to a local judge model, or eval.judge.backend=openai with eval.judge.api "
            "(base_url, model), or eval.judge.enabled=false")


def validate(cfg: DictConfig, layers: Sequence[tuple[str, Any]] = ()) -> None:
    """Check every leaf with choices or a range, the prompt templates' fields and what an API teacher
    rules out (``_api_teacher_problems``); a ConfigError lists each problem, with the last of
    ``layers`` ((source, layer) pairs, in merge order) that set it."""
    problems = [*_leaf_problems(cfg), *(_template_problems(cfg) if cfg.data.task in TASKS else ()),
                *_api_teacher_problems(cfg)]
    if problems:
        def source(path: str) -> str:
            found = [src for src, layer in layers if OmegaConf.select(layer, path, default=None) is not None]
            return found[-1] if found else "schema default"
        raise ConfigError("invalid config value(s):\n" + "\n".join(f"  {source(p)}: {msg}" for p, msg in problems))


