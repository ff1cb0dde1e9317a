"""The data steps of pipelines (:mod:`distillab.pipeline`): steps that are not one ordinary run.

``select_ta`` picks a teacher assistant for a teacher -> assistant -> student chain (Mirzadeh et al. 2020).
Each step works resumably inside its folder and returns its outputs (``${step.output}`` in later steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillab.config import ConfigError, load_config
from distillab.core.files import write_json_atomic
from distillab.pipeline import PIPELINE_STEPS, DataStep, StepContext

if TYPE_CHECKING:
    import torch


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


def ta_candidates(teacher: dict, student: dict, num_classes: int = 100) -> list[dict]:
    """Teacher-assistant candidates from the zoo: the registered classifiers of the teacher's family (its name
    without digits: resnet, resnetx, wrn__, vgg, ...), default options, with strictly more parameters than the student
    and fewer than the teacher, smallest first; each ``{arch, options, params}``."""
    import re

    from distillab.models import MODELS, count_parameters, create_model, model_kind

    def size(spec: dict) -> int:
        return count_parameters(create_model(spec["arch"], num_classes=num_classes, **(spec.get("options") or {})))

    def family_of(name: str) -> str:  # resnet110 -> resnet, resnet8x4 -> resnetx, wrn_40_2 -> wrn__
        return re.sub(r"\d+", "", name)

    family = family_of(teacher["arch"])
    low, high = size(student), size(teacher)
    out = []
    for name in MODELS.names():
        if model_kind(name) != "classifier" or family_of(name) != family:
            continue
        if name in (teacher["arch"], student["arch"]):
            continue
        n = size({"arch": name})
        if low < n < high:
            out.append({"arch": name, "options": {}, "params": n})
    return sorted(out, key=lambda c: c["params"])


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

    params: ``candidates`` (a list of ``{arch, options}``, or ``auto``: :func:`ta_candidates`), ``student``
    (``{arch, options}``), ``teacher``
    (a run folder, e.g. ``${teacher.run}``) or ``teacher_top1``, ``teacher_arch``/``teacher_options`` for the
    parameter rule, ``config`` (the labels-only run config), ``rule``. The reasoning is written to
    ``selection.json``. Outputs: ``arch``, ``options`` (the chosen assistant), ``rule``.
    """
    from distillab.models import count_parameters, create_model

    rule = params.get("rule", "accuracy_midpoint")
    num_classes = int(params.get("num_classes", 10))
    candidates = params.get("candidates") or []
    if candidates == "auto":  # the zoo's models of the teacher's family between student and teacher
        teacher = {"arch": params.get("teacher_arch"), "options": params.get("teacher_options") or {}}
        if teacher["arch"] is None or params.get("student") is None:
            raise ConfigError("select_ta: candidates: auto needs `teacher_arch` and `student`")
        candidates = [{"arch": c["arch"], "options": c["options"]}
                      for c in ta_candidates(teacher, params["student"], num_classes)]
        if not candidates:
            raise ConfigError(f"select_ta: the zoo has no {teacher['arch']}-family model between "
                              f"{params['student']['arch']} and {teacher['arch']}: list `candidates`")
    if len(candidates) < 1 or not all(isinstance(c, dict) and "arch" in c for c in candidates):
        raise ConfigError("select_ta: `candidates` must be `auto` or a list of {arch: ..., options: {...}}")

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


# ------------------------------------------------------------------ model compression: MUNGE + an ensemble


def _members(runs: list[str]):
    """The trained models of run folders, all on one data set (their first one's, with its options and root)."""
    from distillab.models import load_model

    if not runs:
        raise ConfigError("give the ensemble's run folders, e.g. [${m1.run}, ${m2.run}]")
    loaded = [load_model(r) for r in runs]
    data = {(m.data, json.dumps(m.data_options, sort_keys=True)) for m in loaded}
    if len(data) > 1:
        raise ConfigError(f"the ensemble's models were trained on different data sets: {sorted(data)}")
    return loaded


def _ensemble_probs(models, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    import torch

    with torch.no_grad():
        out = [sum(m.model.eval()(x[i:i + batch]).softmax(1) for m in models) / len(models)
               for i in range(0, len(x), batch)]
    return torch.cat(out)


def munge_step(params: dict, folder: Path, ctx: StepContext) -> dict[str, Any]:
    """A transfer set for model compression (Buciluǎ, Caruana & Niculescu-Mizil 2006): MUNGE pseudo-data made
    from the training set of the ``ensemble``'s data set (plus the training set itself, ``keep_original``),
    labelled with the ensemble's mean probability, written as a ``tensors`` data set (soft targets in the
    field ``soft``; the real test set kept for evaluation, with the same normalisation).

    params: ``ensemble`` (run folders), ``p``, ``s``, ``multiplier`` (MUNGE: see :func:`distillab.munge.munge`;
    0: no pseudo-data, the training set alone labelled by the ensemble), ``nominal`` (indices of nominal attributes), ``keep_original`` (default true), ``seed``. Outputs: ``data``
    (the folder), ``size``, ``ensemble_top1`` (the ensemble's test top-1 on the real test set).
    """
    import torch

    from distillab.data import build_dataset
    from distillab.data.tensor_folder import save_tensor_dataset
    from distillab.munge import munge

    models = _members(list(params.get("ensemble") or []))
    first = models[0]
    bundle = build_dataset(first.data, root=first.data_root, **first.data_options)
    if bundle.kind != "vector":
        raise ConfigError(f"munge: data set {bundle.name!r} holds {bundle.kind}s; MUNGE works on feature vectors "
                          "(tabular data sets: breast_cancer, wine, digits_vector)")
    x_train = bundle.test_transform(bundle.train.inputs)  # MUNGE in the standardised feature space
    x_test = bundle.test_transform(bundle.test.inputs)
    gen = torch.Generator().manual_seed(int(params.get("seed", 0)))
    multiplier = params.get("multiplier", 5)
    if multiplier == 0:  # no pseudo-data: the training set alone, labelled by the ensemble (the ablation row)
        if not params.get("keep_original", True):
            raise ConfigError("munge: multiplier 0 with keep_original false leaves an empty transfer set")
        pseudo = x_train[:0]
    else:
        pseudo = munge(x_train, nominal=params.get("nominal", ()), p=float(params.get("p", 0.5)),
                       s=float(params.get("s", 10.0)), multiplier=multiplier, generator=gen)
    transfer = torch.cat([x_train, pseudo]) if params.get("keep_original", True) else pseudo
    soft = _ensemble_probs(models, transfer)
    test_probs = _ensemble_probs(models, x_test)
    ensemble_top1 = 100.0 * float((test_probs.argmax(1) == bundle.test.labels).float().mean())
    out = save_tensor_dataset(folder / "data", transfer, None, x_test, bundle.test.labels,
                              num_classes=bundle.num_classes, kind="vector", mean=None, std=None,
                              soft_targets=soft, class_names=bundle.class_names,
                              meta={"made_by": "munge", "source": bundle.name, "params": params,
                                    "original": len(x_train), "pseudo": len(pseudo)})
    ctx.report(f"munge: {len(pseudo)} pseudo samples + {len(x_train) if params.get('keep_original', True) else 0} "
               f"originals labelled by an ensemble of {len(models)} (test top-1 {ensemble_top1:.2f}%) -> {out}")
    return {"data": str(out.resolve()), "size": len(transfer), "ensemble_top1": ensemble_top1}


PIPELINE_STEPS.register("munge", description="MUNGE transfer set labelled by an ensemble")(
    DataStep(munge_step, ("data", "size", "ensemble_top1"), "MUNGE transfer set labelled by an ensemble"))


# ------------------------------------------------------------------ data-free: DeepInversion


def invert_step(params: dict, folder: Path, ctx: StepContext) -> dict[str, Any]:
    """Inputs synthesised from a trained teacher alone (DeepInversion, Yin et al. CVPR 2020;
    :class:`distillab.inversion.Inverter`), written as a ``tensors`` data set whose test split is the real test
    set (for evaluation only), with a grid figure of the samples per class.

    params: ``teacher`` (a run folder or model file), ``batches`` (how many batches; each has its own seed and
    labels continuing the class cycle), ``preset`` (cifar | imagenet) and any :class:`InversionSettings` option
    (``batch_size``, ``iterations``, ``lr``, ``bn``, ``tv_l2``, ``adi``, ...), ``student`` (a run folder or model
    file: the student of Adaptive DeepInversion's competition term, with ``adi`` > 0), ``seed``. Resumable: the finished batches
    and the current batch's state are checkpointed every ``checkpoint_every`` iterations. Outputs: ``data``,
    ``size``, ``seconds_per_sample``.
    """
    import time

    import torch

    from distillab.core.files import load_checkpoint, save_atomic
    from distillab.data import build_dataset
    from distillab.data.tensor_folder import save_tensor_dataset
    from distillab.engine.progress import WorkProgress
    from distillab.inversion import Inverter, save_grid
    from distillab.models import load_model

    options = {k: v for k, v in params.items()
               if k not in ("teacher", "student", "batches", "seed", "checkpoint_every")}
    teacher = load_model(params["teacher"]) if "teacher" in params else None
    student = load_model(params["student"]).model.eval() if params.get("student") else None
    if teacher is None:
        raise ConfigError("invert: give `teacher` (its run folder, e.g. ${teacher.run})")
    bundle = build_dataset(teacher.data, root=teacher.data_root, **teacher.data_options)
    n_batches, seed = int(params.get("batches", 1)), int(params.get("seed", 0))
    every = int(params.get("checkpoint_every", 100))
    state_file = folder / "checkpoint.pt"
    state = load_checkpoint(state_file) if state_file.is_file() else {"done": [], "current": None, "seconds": 0.0}
    net = teacher.model.eval()

    def make(b: int) -> Inverter:
        return Inverter(net, input_shape=bundle.input_shape, num_classes=bundle.num_classes, seed=seed,
                        batch_index=b, student=student, **options)

    probe = make(0)
    total = n_batches * probe.settings.iterations
    with WorkProgress(total, f"inverting {teacher.arch} ({n_batches} batches)", ctx.console) as bar:
        bar.advance(len(state["done"]) * probe.settings.iterations)
        for b in range(len(state["done"]), n_batches):
            inv = make(b)
            if state["current"] is not None:
                inv.load_state_dict(state["current"])
                bar.advance(inv.iteration)
            while not inv.done:
                tic = time.perf_counter()
                before = inv.iteration
                inv.run(steps=every)
                bar.advance(inv.iteration - before)
                state["seconds"] += time.perf_counter() - tic
                state["current"] = inv.state_dict()
                save_atomic(state, state_file)
            x, y = inv.result()
            state["done"].append({"x": x.cpu(), "y": y.cpu()})
            state["current"] = None
            save_atomic(state, state_file)
    images = torch.cat([d["x"] for d in state["done"]])
    labels = torch.cat([d["y"] for d in state["done"]])
    test_x = bundle.test_transform(bundle.test.inputs if hasattr(bundle.test, "inputs") else
                                   torch.stack([bundle.test[i][0] for i in range(len(bundle.test))]))
    test_y = bundle.test.labels if hasattr(bundle.test, "labels") else \
        torch.as_tensor([int(bundle.test[i][1]) for i in range(len(bundle.test))])
    out = save_tensor_dataset(folder / "data", images, labels, test_x, test_y, num_classes=bundle.num_classes,
                              kind=bundle.kind, mean=None, std=None, class_names=bundle.class_names,
                              meta={"made_by": "invert", "teacher": str(teacher.path), "params": params})
    save_grid(images, labels, folder / "samples.png", class_names=bundle.class_names)
    per_sample = state["seconds"] / max(len(images), 1)
    ctx.report(f"invert: {len(images)} samples from {teacher.arch} in {state['seconds']:.0f} s "
               f"({1000 * per_sample:.1f} ms per sample) -> {out}; grid {folder / 'samples.png'}")
    return {"data": str(out.resolve()), "size": len(images), "seconds_per_sample": per_sample,
            "figure": str((folder / "samples.png").resolve())}


PIPELINE_STEPS.register("invert", description="DeepInversion: inputs synthesised from a teacher alone")(
    DataStep(invert_step, ("data", "size", "seconds_per_sample", "figure"),
             "DeepInversion: inputs synthesised from a teacher alone"))
