"""The data steps of pipelines (:mod:`distillab.pipeline`): steps that are not one ordinary run.

``select_ta`` picks a teacher assistant for a teacher -> assistant -> student chain (Mirzadeh et al. 2020).
Each step works resumably inside its folder and returns its outputs (``${step.output}`` in later steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillab.config import ConfigError, load_config
from distillab.core.files import write_json_atomic
from distillab.pipeline import PIPELINE_STEPS, DataStep, StepContext


def _label(candidate: dict) -> str:
    options = "-".join(f"{k}{v}" for k, v in sorted((candidate.get("options") or {}).items()))
    return "-".join(filter(None, [candidate["arch"], options]))


def _labels_only(candidate: dict, config: str, folder: Path, ctx: StepContext) -> float:
    """Test top-1 of ``candidate`` trained on labels alone with ``config`` in ``folder`` (resumed or reused)."""
    from distillab.plan import find_config
    from distillab.runner import run

    summary_file = folder / "summary.json"
    if summary_file.is_file():
        return float(json.loads(summary_file.read_text())["test_top1"])
    overrides = [*ctx.overrides, f"student.arch={candidate['arch']}",
                 f"student.options={json.dumps(candidate.get('options') or {})}", "method.name=ce",
                 f"out_dir={folder.parent}", f"name={folder.name}"]
    cfg = load_config(find_config(config), overrides)
    partial = (folder / "checkpoints" / "last.pt").is_file()
    summary, _ = run(cfg, resume=folder if partial else None, run_dir=None if partial else folder,
                     console=ctx.console, label=f"ta candidate {_label(candidate)}")
    return float(summary["test_top1"])


def select_ta(params: dict, folder: Path, ctx: StepContext) -> dict[str, Any]:
    """Teacher-assistant selection (TAKD, Mirzadeh et al. 2020, arXiv 1902.03393).

    The paper sweeps assistant sizes and finds the best single assistant roughly halfway between teacher and
    student; it gives no formula. Rules here:

    * ``accuracy_midpoint`` (default): train every candidate and the student on labels alone with ``config``
      (each in ``<folder>/candidates/<name>``, resumable) and pick the candidate whose test top-1 is closest
      to the midpoint of the teacher's (``teacher_top1``, or read from the ``teacher`` run folder) and the
      student's;
    * ``param_midpoint``: no training: the candidate whose parameter count is closest to the geometric mean of
      the teacher's and the student's.

    params: ``candidates`` (a list of ``{arch, options}``), ``student`` (``{arch, options}``), ``teacher``
    (a run folder, e.g. ``${teacher.run}``) or ``teacher_top1``, ``teacher_arch``/``teacher_options`` for the
    parameter rule, ``config`` (the labels-only run config), ``rule``. The reasoning is written to
    ``selection.json``. Outputs: ``arch``, ``options`` (the chosen assistant), ``rule``.
    """
    from distillab.models import count_parameters, create_model

    candidates = params.get("candidates") or []
    if len(candidates) < 1 or not all(isinstance(c, dict) and "arch" in c for c in candidates):
        raise ConfigError("select_ta: `candidates` must be a list of {arch: ..., options: {...}}")
    rule = params.get("rule", "accuracy_midpoint")
    num_classes = int(params.get("num_classes", 10))

    def size(spec: dict) -> int:
        return count_parameters(create_model(spec["arch"], num_classes=num_classes, **(spec.get("options") or {})))

    rows = [{"candidate": c, "name": _label(c), "params": size(c)} for c in candidates]
    if rule == "param_midpoint":
        teacher = {"arch": params["teacher_arch"], "options": params.get("teacher_options") or {}}
        target = (size(teacher) * size(params["student"])) ** 0.5
        for r in rows:
            r["distance"] = abs(r["params"] - target)
        why = f"parameters closest to the geometric mean of teacher and student ({target:,.0f})"
    elif rule == "accuracy_midpoint":
        if params.get("config") is None or params.get("student") is None:
            raise ConfigError("select_ta: the accuracy rule needs `config` (labels-only recipe) and `student`")
        teacher_top1 = params.get("teacher_top1")
        if teacher_top1 is None:
            if params.get("teacher") is None:
                raise ConfigError("select_ta: give `teacher` (its run folder, e.g. ${teacher.run}) or `teacher_top1`")
            teacher_top1 = json.loads((Path(params["teacher"]) / "summary.json").read_text())["test_top1"]
        student_top1 = _labels_only(params["student"], params["config"], folder / "candidates" / "student", ctx)
        target = (float(teacher_top1) + student_top1) / 2
        for r in rows:
            r["top1"] = _labels_only(r["candidate"], params["config"], folder / "candidates" / r["name"], ctx)
            r["distance"] = abs(r["top1"] - target)
        why = (f"labels-only test top-1 closest to the midpoint of the teacher's ({float(teacher_top1):.2f}) and the "
               f"student's ({student_top1:.2f}): {target:.2f}")
    else:
        raise ConfigError(f"select_ta: unknown rule {rule!r} (accuracy_midpoint or param_midpoint)")
    chosen = min(rows, key=lambda r: r["distance"])
    record = {"rule": rule, "why": why, "chosen": chosen["name"], "candidates": rows}
    write_json_atomic(folder / "selection.json", record)
    ctx.report(f"teacher assistant: {chosen['name']} ({why})")
    return {"arch": chosen["candidate"]["arch"], "options": chosen["candidate"].get("options") or {}, "rule": rule,
            "why": why}


PIPELINE_STEPS.register("select_ta", description="pick a teacher assistant between teacher and student")(
    DataStep(select_ta, ("arch", "options", "rule", "why"), "pick a teacher assistant between teacher and student"))
