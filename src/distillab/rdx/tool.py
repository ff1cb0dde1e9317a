"""``distillab rdx``: explain how two trained models' representations differ (RDX) on N samples.

Model A is the expert (teacher, RDX's model 0), model B the student (model 1). Both are loaded from
checkpoints (a run's ``model.pt`` records architecture, options and data set; ``--arch-a/--arch-b``
for a bare state dict), the data set is rebuilt, both models embed the same N samples (pooled
penultimate features, eval mode, test transforms; N = 500 and seed 0 as in every RDX config), the
two directional affinities are computed with :func:`distillab.rdx.affinity.rdx_affinities` and each
is explained with :mod:`distillab.rdx.explain`. The output folder gets one figure per direction, a
side-by-side overview and ``rdx.json`` (settings, cluster labels, class composition per cluster,
representative samples, timings).
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from distillab.core.errors import UsageError
from distillab.models import LoadedModel, load_model
from distillab.rdx.affinity import rdx_affinities, resolve_gamma
from distillab.rdx.explain import (DIRECTIONS, NULL_THRESHOLD, FigureData, cluster_composition, explain_direction,
                                   pca_2d, save_direction_figure, save_overview_figure)

SPLITS = ("train", "test", "all")
FIGURES = {"10": "rdx_10_student_unique.png", "01": "rdx_01_expert_unique.png", "overview": "rdx_overview.png"}


def parse_classes(text: str | None) -> list[int] | None:
    """'3,5,8' -> [3, 5, 8]."""
    if text is None or not text.strip():
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--classes must be a comma list of integers such as 3,5,8, got {text!r}") from None


def parse_gamma(text: str | float) -> float | str:
    if isinstance(text, (int, float)):
        return float(text)
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--gamma must be a number or 'auto' (80/N), got {text!r}") from None


def _labels(part) -> torch.Tensor:
    labels = getattr(part, "labels", None)
    return labels.cpu() if labels is not None else torch.as_tensor([int(part[i][1]) for i in range(len(part))])


def sample_subset(bundle, split: str, n: int, seed: int,
                  classes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Raw inputs, labels and indices of ``n`` samples drawn without replacement (seeded) from ``split``
    (only samples of the labels ``classes``, when given).

    Indices count within the split; for "all", the training set comes first. All samples are used when
    the split holds fewer than ``n``.
    """
    if split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 2:
        raise UsageError(f"--n must be at least 2, got {n}")
    parts = {"train": [bundle.train], "test": [bundle.test], "all": [bundle.train, bundle.test]}[split]
    sizes = [len(p) for p in parts]
    total = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    if classes is None:
        chosen = torch.randperm(total, generator=gen)[:min(n, total)].sort().values.numpy()
    else:
        labels = torch.cat([_labels(p) for p in parts])
        pool = torch.nonzero(torch.isin(labels, torch.as_tensor(classes))).flatten()
        if len(pool) == 0:
            raise UsageError(f"no sample of the {split} split has a label in --classes {classes}")
        chosen = pool[torch.randperm(len(pool), generator=gen)[:min(n, len(pool))]].sort().values.numpy()
    xs, ys, offset = [], [], 0
    for part, size in zip(parts, sizes):
        local = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        inputs = getattr(part, "inputs", None)
        if inputs is not None:  # an in-memory ArrayDataset
            xs.append(inputs[torch.as_tensor(local)].cpu())
            ys.append(part.labels[torch.as_tensor(local)].cpu())
        elif len(local):
            items = [part[int(i)] for i in local]
            xs.append(torch.stack([torch.as_tensor(it[0]) for it in items]))
            ys.append(torch.as_tensor([int(it[1]) for it in items]))
        offset += size
    return torch.cat(xs), torch.cat(ys).long(), chosen


@torch.no_grad()
def embed(model: nn.Module, x_raw: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor],
          device: torch.device, role: str, batch_size: int = 256) -> torch.Tensor:
    """Pooled penultimate embeddings (the model's ``embedding`` tap), eval mode, one row per sample."""
    from distillab.features import embed_batches

    batches = (transform(x_raw[i:i + batch_size].to(device)) for i in range(0, len(x_raw), batch_size))
    return embed_batches(model.to(device), batches, role)


def _output_dir(out: Path | None, a: LoadedModel, b: LoadedModel) -> Path:
    from distillab.engine.rundir import create_run_dir

    target = Path(out) if out is not None else Path("runs") / f"rdx-{a.label}-vs-{b.label}"
    return create_run_dir(target.parent, target.name)  # an existing folder gets -2, -3, ...


def _model_record(ckpt: LoadedModel) -> dict:
    return {"path": str(ckpt.path), "arch": ckpt.arch, "options": ckpt.options, "data": ckpt.data,
            "data_options": ckpt.data_options, "test_top1": ckpt.test_top1}


def run_rdx(model_a: str | Path, model_b: str | Path, *, data: str | None = None, root: str | None = None,
            classes: list[int] | None = None, split: str = "train", n: int = 500, k: int = 3,
            gamma: float | str = 0.1, beta: float = 5.0, out: str | Path | None = None,
            arch_a: str | None = None, arch_b: str | None = None, seed: int = 0,
            null_threshold: float = NULL_THRESHOLD, device: str = "auto",
            report: Callable[[str], None] | None = None) -> Path:
    """Compare expert ``model_a`` with student ``model_b`` by RDX; return the output folder.

    data / root / classes: the data set (default: the one model A was trained on, with its options),
    its root, and the classes to keep. split / n / seed: ``n`` samples of that split, drawn with ``seed``
    (which also seeds spectral clustering). k: clusters besides the null one. gamma ("auto": 80/N) and
    beta: RDX's locally-biased difference and affinity exponent. null_threshold: cluster 0 is the null
    cluster (grey, no sample grid) when its mean affinity is below this. Raises ValueError or
    FileNotFoundError, with the fix in the message, for anything the user can correct.
    """
    from distillab.data import build_dataset, dataset_options
    from distillab.core.files import write_json_atomic
    from distillab.engine.device import resolve_device

    report = report or (lambda msg: None)
    if k < 1:
        raise UsageError(f"--k (clusters besides the null one) must be at least 1, got {k}")
    gamma = parse_gamma(gamma)
    seconds: dict[str, float] = {}
    tic = time.perf_counter()
    a, b = (load_model(m, arch=arch, role=role)
            for m, arch, role in ((model_a, arch_a, "model_a"), (model_b, arch_b, "model_b")))

    name = data or a.data
    if name is None:
        raise UsageError(f"checkpoint {str(a.path)!r} does not record its data set: pass --data")
    options = dict(a.data_options) if name == a.data else {}
    root = root or (a.data_root if name == a.data else None)  # where model A's run read its data
    keep = None
    if classes is not None:
        if "classes" in dataset_options(name):  # the data set keeps (and re-labels) them itself
            options["classes"] = classes
        else:  # the samples of those labels are drawn from the whole set
            keep = classes
    bundle = build_dataset(name, root=root, **options)
    if b.data is not None and b.data != name:
        report(f"note: the student was trained on {b.data!r}, compared here on {name!r}")
    x_raw, y, indices = sample_subset(bundle, split, n, seed, keep)
    if len(indices) < n:
        report(f"note: the {split} split of {name!r} holds {len(indices)} samples; using all of them (asked {n})")
    if len(indices) < 2 * (k + 1):
        raise UsageError(f"{len(indices)} samples are too few for {k + 1} clusters: lower --k or use --split all")

    dev = resolve_device(device)
    # each classifier keeps the classes it was trained with: RDX reads the embeddings only
    emb_a, emb_b = (embed(ckpt.model, x_raw, bundle.test_transform, dev, role)
                    for ckpt, role in ((a, "model_a"), (b, "model_b")))
    seconds["load_and_embed"] = time.perf_counter() - tic
    report(f"loaded both models and embedded {len(indices)} samples ({seconds['load_and_embed']:.1f} s)")

    tic = time.perf_counter()
    g = float(resolve_gamma(gamma, len(indices)))
    a01, a10 = rdx_affinities(emb_a, emb_b, gamma=g, beta=beta, mode="local")
    affinity = {"10": a10.detach().cpu().double().numpy(), "01": a01.detach().cpu().double().numpy()}
    seconds["affinities"] = time.perf_counter() - tic
    report(f"RDX affinities ({seconds['affinities']:.1f} s)")

    tic = time.perf_counter()
    embeddings = {0: emb_a.double().numpy(), 1: emb_b.double().numpy()}
    explanations = {d: explain_direction(affinity[d], embeddings[DIRECTIONS[d].model], k, d, seed=seed,
                                         null_threshold=null_threshold) for d in ("10", "01")}
    seconds["clustering"] = time.perf_counter() - tic
    report(f"spectral clustering of both directions ({seconds['clustering']:.1f} s)")

    tic = time.perf_counter()
    folder = _output_dir(Path(out) if out is not None else None, a, b)
    classes_np = y.numpy()
    figure_data = FigureData(pcs=(pca_2d(embeddings[0]), pca_2d(embeddings[1])), samples=x_raw.float().numpy(),
                             kind=bundle.kind, classes=classes_np, class_names=bundle.class_names,
                             names=(a.describe("expert"), b.describe("student")))
    for d, expl in explanations.items():
        save_direction_figure(folder / FIGURES[d], expl, affinity[d], figure_data)
    save_overview_figure(folder / FIGURES["overview"], [explanations["10"], explanations["01"]],
                         [affinity["10"], affinity["01"]], figure_data)
    seconds["figures"] = time.perf_counter() - tic
    report(f"figures written ({seconds['figures']:.1f} s)")

    summary = {
        "model_a": {"role": "expert (RDX model 0)", **_model_record(a)},
        "model_b": {"role": "student (RDX model 1)", **_model_record(b)},
        "data": {"name": name, "options": options, "split": split, "n_requested": n, "n": int(len(indices)),
                 "seed": seed, "indices": indices.tolist(), "labels": classes_np.tolist(),
                 "class_names": bundle.class_names},
        "rdx": {"k": k, "gamma": g, "gamma_given": gamma, "beta": beta, "mode": "local",
                "null_threshold": null_threshold if math.isfinite(null_threshold) else str(null_threshold),
                "embedding_dims": [int(emb_a.shape[1]), int(emb_b.shape[1])]},
        "directions": {d: _direction_record(expl, classes_np, bundle.class_names, indices)
                       for d, expl in explanations.items()},
        "figures": dict(FIGURES),
        "seconds": {key: round(v, 3) for key, v in seconds.items()},
        "device": str(dev),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    write_json_atomic(folder / "rdx.json", summary)
    return folder


def _direction_record(expl, classes: np.ndarray, class_names: list[str] | None, indices: np.ndarray) -> dict:
    d = expl.direction
    clusters = []
    for entry in cluster_composition(expl.labels, classes, class_names):
        c = entry["cluster"]
        reps = expl.representatives[c]
        clusters.append({**entry, "null": expl.is_null(c), "mean_affinity": round(float(expl.mean_affinity[c]), 4),
                         "representatives": reps.tolist(), "representatives_data_index": indices[reps].tolist()})
    return {"title": d.title, "meaning": d.meaning, "matrix": d.matrix,
            "neighbours_in": "student" if d.model == 1 else "expert",
            "cluster_labels": expl.labels.tolist(), "clusters": clusters}


def format_summary(folder: Path) -> str:
    """A few lines per direction: each cluster's size and class composition."""
    import json

    from distillab.rdx.explain import describe_composition

    summary = json.loads((folder / "rdx.json").read_text())
    lines = [f"RDX on {summary['data']['n']} samples of {summary['data']['name']} "
             f"(gamma {summary['rdx']['gamma']:g}, beta {summary['rdx']['beta']:g}, k {summary['rdx']['k']})"]
    for rec in summary["directions"].values():
        lines.append(f"{rec['title']}: {rec['meaning']}")
        for cl in rec["clusters"]:
            tag = " (null)" if cl["null"] else ""
            comp = describe_composition(cl)
            lines.append(f"  cluster {cl['cluster']}{tag}: {cl['size']} samples, mean affinity "
                         f"{cl['mean_affinity']:.2f}" + (f"; {comp}" if comp else ""))
    lines.append(f"figures and rdx.json in {folder}")
    return "\n".join(lines)
