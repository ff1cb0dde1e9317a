"""The ``probe`` and ``rdx`` commands: their arguments here (importable without torch, so ``--help`` is
quick), their work in :mod:`distillab.probe` and :mod:`distillab.rdx.tool`, imported when they run."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from distillab.cli_common import console, handled
from distillab.tool_defaults import (NULL_THRESHOLD, PROBE_BATCH_SIZE, PROBE_EPOCHS, PROBE_LR,
                                     PROBE_WEIGHT_DECAY)


def probe_command(
    checkpoint: Path = typer.Argument(..., help="model.pt of a run, or its run folder"),
    data: str = typer.Option(..., help="target data set the linear classifier is trained and tested on"),
    root: Optional[str] = typer.Option(None, help="data root (default: the run's, for its own data set)"),
    option: List[str] = typer.Option(None, help="target data set option key=value (YAML value), repeatable"),
    epochs: int = typer.Option(PROBE_EPOCHS, help="passes over the cached features"),
    lr: float = typer.Option(PROBE_LR, help="AdamW learning rate (cosine-annealed)"),
    batch_size: int = typer.Option(PROBE_BATCH_SIZE, help="mini-batch size (embedding and probe training)"),
    weight_decay: float = typer.Option(PROBE_WEIGHT_DECAY, help="AdamW weight decay"),
    seed: int = typer.Option(0, help="seed of the probe's shuffling"),
    device: str = typer.Option("auto", help="cpu, cuda, mps or auto"),
    resize: bool = typer.Option(False, help="resize target images bilinearly to the model's input size"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/probe-<ckpt>-on-<data>; "
                                       "never overwritten)"),
    arch: Optional[str] = typer.Option(None, help="architecture (default: read from the checkpoint)"),
) -> None:
    """Linear transfer probe: train a linear classifier on a frozen model's embedding of another data set."""
    with handled():
        from distillab.probe import format_summary, parse_options, run_probe

        summary = run_probe(checkpoint, data, root=root, data_options=parse_options(option), epochs=epochs, lr=lr,
                            batch_size=batch_size, weight_decay=weight_decay, seed=seed, device=device,
                            resize=resize, out=out, arch=arch, report=console.print, console=console)
    console.print(format_summary(summary), highlight=False)


def rdx_command(
    model_a: Path = typer.Argument(..., help="the expert (teacher): model.pt of a run, or its run folder"),
    model_b: Path = typer.Argument(..., help="the student: model.pt of a run, or its run folder"),
    data: Optional[str] = typer.Option(None, help="data set (default: the one model_a was trained on)"),
    root: Optional[str] = typer.Option(None, help="data root (default: model_a's run's, for its data set)"),
    classes: Optional[str] = typer.Option(None, help="keep only these classes, a comma list such as 3,5,8"),
    split: str = typer.Option("train", help="where the samples come from: train (as RDX), test or all"),
    n: int = typer.Option(500, help="number of samples (all of the split if it holds fewer)"),
    k: int = typer.Option(3, help="clusters per direction besides the extra (null) one"),
    gamma: str = typer.Option("0.1", help="locally-biased difference scale, or auto (80/N)"),
    beta: float = typer.Option(5.0, help="affinity exponent"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/rdx-<a>-vs-<b>; never overwritten)"),
    arch_a: Optional[str] = typer.Option(None, help="architecture of model_a (default: read from the checkpoint)"),
    arch_b: Optional[str] = typer.Option(None, help="architecture of model_b (default: read from the checkpoint)"),
    seed: int = typer.Option(0, help="seed of the sample draw and of spectral clustering"),
    null_threshold: float = typer.Option(NULL_THRESHOLD, help="cluster 0 is the null cluster (grey) when its mean "
                                         "affinity is below this"),
    device: str = typer.Option("auto", help="cpu, cuda, mps or auto"),
) -> None:
    """RDX: clusters of samples one model groups and the other separates, in both directions, with figures."""
    with handled():
        from distillab.rdx.tool import format_summary, parse_classes, run_rdx

        folder = run_rdx(model_a, model_b, data=data, root=root, classes=parse_classes(classes), split=split, n=n,
                         k=k, gamma=gamma, beta=beta, out=out, arch_a=arch_a, arch_b=arch_b, seed=seed,
                         null_threshold=null_threshold, device=device, report=console.print)
    console.print(format_summary(folder), highlight=False)
