"""``distillab probe``: linear transfer probe of a trained model's frozen embedding on another data set.

DCD (Giakoumoglou & Stathaki, 2024, arXiv:2407.11802) backs its claim that distilled students
transfer better with this measurement: freeze a CIFAR-100 student, train a linear classifier on its
pooled embedding of Tiny-ImageNet or STL-10, report top-1. Here the model is loaded from a run's
``model.pt`` (eval mode, no gradients), the target data set's train and test splits are embedded once
(pooled penultimate features, the target's test-time transform, no augmentation), the features are
standardised with the training split's mean and std, and a linear layer is trained on the cached
features with AdamW and a cosine schedule. The output folder gets ``probe.json``.
"""

from __future__ import annotations

import math
import platform
import re
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from distillab.core.errors import DataError, UsageError
from distillab.engine.progress import WorkProgress
from distillab.models import LoadedModel, load_model

from distillab.tool_defaults import PROBE_BATCH_SIZE as BATCH_SIZE
from distillab.tool_defaults import PROBE_EPOCHS as EPOCHS
from distillab.tool_defaults import PROBE_LR as LR
from distillab.tool_defaults import PROBE_WEIGHT_DECAY as WEIGHT_DECAY
STD_FLOOR = 1e-6  # a feature dimension that never varies is left unscaled, not blown up


def parse_options(texts: list[str] | None) -> dict:
    """['classes=[3, 5, 8]', 'seed=7'] -> {'classes': [3, 5, 8], 'seed': 7} (values parsed as YAML)."""
    from distillab.config import parse_override

    options: dict = {}
    for text in texts or []:
        if "=" not in text:
            raise UsageError(f"--option {text!r} is not of the form key=value (e.g. seed=7)")
        path, value = parse_override(text)
        options[".".join(path)] = value
    return options


def expected_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    shape = getattr(model, "input_shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def check_input_shape(expected: tuple[int, ...] | None, bundle, resize: bool) -> tuple[int, ...] | None:
    """The spatial size to resize target images to, or None; a ValueError with the fix when shapes disagree.

    Resizing is offered only for images whose channel count matches (bilinear, after normalisation).
    """
    got = tuple(int(s) for s in bundle.input_shape)
    if expected is None or got == expected:
        return None
    spatial_only = bundle.kind == "image" and len(got) == len(expected) == 3 and got[0] == expected[0]
    if spatial_only and resize:
        return expected[1:]
    fixes = ["use a target data set with the same input shape"]
    if spatial_only:
        fixes.append("pass --resize to resize its images bilinearly")
    if bundle.name in ("imagefolder", "synthetic") and len(expected) == 3:
        fixes.append(f"pass --option image_size={expected[-1]}")
    raise UsageError(f"the model expects inputs of shape {expected} but data set {bundle.name!r} gives {got}: "
                     + ", or ".join(fixes))


@torch.no_grad()
def extract_features(model: nn.Module, dataset, transform: Callable[[torch.Tensor], torch.Tensor],
                     device: torch.device, batch_size: int = BATCH_SIZE, size: tuple[int, ...] | None = None,
                     progress: WorkProgress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of a whole split: the model's pooled embedding tap, eval mode, CPU float32."""
    from distillab.engine.loader import BatchLoader
    from distillab.features import embed_batches

    labels: list[torch.Tensor] = []

    def batches():
        for batch in BatchLoader(dataset, batch_size, device=device, shuffle=False):
            x, y = batch["input"], batch["label"]
            labels.append(y.long().cpu())
            x = transform(x)
            if size is not None:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            yield x
            if progress is not None:
                progress.advance(len(y))

    feats = embed_batches(model.to(device), batches())
    return feats, torch.cat(labels)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, *, epochs: int = EPOCHS,
                       lr: float = LR, batch_size: int = BATCH_SIZE, weight_decay: float = WEIGHT_DECAY,
                       seed: int = 0, device: torch.device | str = "cpu",
                       progress: WorkProgress | None = None) -> nn.Linear:
    """Softmax regression on (already standardised) features. Zero initialisation and a seeded shuffle
    make it deterministic for a given seed and device."""
    probe = nn.Linear(train_x.shape[1], num_classes).to(device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    x, y = train_x.to(device), train_y.to(device)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress.advance()
    return probe.eval()


@torch.no_grad()
def top1(probe: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    device = probe.weight.device
    return 100.0 * float((probe(x.to(device)).argmax(1).cpu() == y).float().mean())


def _output_dir(out: Path | None, ckpt: LoadedModel, data: str) -> Path:
    from distillab.engine.rundir import create_run_dir

    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", data)
    target = Path(out) if out is not None else Path("runs") / f"probe-{ckpt.label}-on-{safe}"
    return create_run_dir(target.parent, target.name)  # an existing folder gets -2, -3, ...


def run_probe(checkpoint: str | Path, data: str, *, root: str | None = None, data_options: dict | None = None,
              epochs: int = EPOCHS, lr: float = LR, batch_size: int = BATCH_SIZE,
              weight_decay: float = WEIGHT_DECAY, seed: int = 0, device: str = "auto", resize: bool = False,
              out: str | Path | None = None, arch: str | None = None,
              report: Callable[[str], None] | None = print, console=None) -> dict:
    """Linear-probe the frozen embedding of ``checkpoint`` on data set ``data``; return the summary.

    data_options: the target data set's options (only these: the checkpoint's own data options are not
    carried over). resize: resize target images bilinearly to the model's input size when only the
    spatial size differs. The summary is also written to ``probe.json`` in a new folder (default
    runs/probe-<checkpoint>-on-<data>, never overwritten). ``console``: a rich console to show progress on (a
    bar on a terminal, periodic lines otherwise). Raises a UserError, with the fix in the message, for anything
    the user can correct.
    """
    from distillab.data import build_dataset
    from distillab.core.files import write_json_atomic
    from distillab.engine.device import resolve_device
    from distillab.features import resolve_feature

    report = report or (lambda msg: None)
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if lr <= 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    options = dict(data_options or {})
    seconds: dict[str, float] = {}

    tic = time.perf_counter()
    ckpt = load_model(checkpoint, arch=arch)  # its classifier keeps its own classes: the probe reads the embedding
    if root is None and data == ckpt.data:  # the model's own data set: where its run read it
        root = ckpt.data_root
    bundle = build_dataset(data, root=root, **options)
    model = ckpt.model.requires_grad_(False).eval()
    expected = expected_input_shape(model)
    size = check_input_shape(expected, bundle, resize)
    if len(bundle.train) == 0 or len(bundle.test) == 0:
        raise DataError(f"data set {data!r} has an empty train or test split")
    seconds["load"] = time.perf_counter() - tic

    tic = time.perf_counter()
    dev = resolve_device(device)
    with WorkProgress(len(bundle.train) + len(bundle.test), f"embedding {data} with {ckpt.arch}", console) as bar:
        train_x, train_y = extract_features(model, bundle.train, bundle.test_transform, dev, batch_size, size, bar)
        test_x, test_y = extract_features(model, bundle.test, bundle.test_transform, dev, batch_size, size, bar)
    seconds["embed"] = time.perf_counter() - tic
    if size is not None:
        report(f"note: {data!r} images resized from {tuple(bundle.input_shape[1:])} to {size}")

    tic = time.perf_counter()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(STD_FLOOR)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    with WorkProgress(epochs, "training the linear probe (epochs)", console) as bar:
        probe = train_linear_probe(train_x, train_y, bundle.num_classes, epochs=epochs, lr=lr, batch_size=batch_size,
                                   weight_decay=weight_decay, seed=seed, device=dev, progress=bar)
    train_top1, test_top1 = top1(probe, train_x, train_y), top1(probe, test_x, test_y)
    seconds["probe"] = time.perf_counter() - tic

    counts = torch.bincount(train_y, minlength=bundle.num_classes)
    majority = int(counts.argmax())
    folder = _output_dir(Path(out) if out is not None else None, ckpt, data)
    summary = {
        "train_top1": round(train_top1, 3),
        "test_top1": round(test_top1, 3),
        "chance_top1": round(100.0 / bundle.num_classes, 3),  # uniform guessing
        "majority_top1": round(100.0 * float((test_y == majority).float().mean()), 3),  # the train's largest class
        "model": {"path": str(ckpt.path), "arch": ckpt.arch, "options": ckpt.options, "data": ckpt.data,
                  "data_options": ckpt.data_options, "test_top1": ckpt.test_top1,
                  "input_shape": list(expected) if expected is not None else None},
        "data": {"name": data, "root": root, "options": options, "num_classes": bundle.num_classes,
                 "input_shape": list(bundle.input_shape), "resized_to": list(size) if size is not None else None,
                 "n_train": len(train_y), "n_test": len(test_y), "class_names": bundle.class_names},
        "features": {"tap": resolve_feature(model, "embedding"), "dim": int(train_x.shape[1]), "standardised": "train mean/std"},
        "probe": {"classifier": "linear", "init": "zeros", "optimizer": "AdamW", "schedule": "cosine",
                  "epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay, "seed": seed},
        "seconds": {key: round(v, 3) for key, v in seconds.items()},
        "device": str(dev),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "folder": str(folder),
    }
    write_json_atomic(folder / "probe.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    d = summary["data"]
    return (f"linear probe of {summary['model']['arch']} ({summary['features']['dim']}-d embedding) on {d['name']} "
            f"({d['n_train']} train / {d['n_test']} test, {d['num_classes']} classes): test top-1 "
            f"{summary['test_top1']:.2f}%, train top-1 {summary['train_top1']:.2f}%, chance "
            f"{summary['chance_top1']:.2f}%; probe.json in {summary['folder']}")
