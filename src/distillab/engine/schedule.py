"""Optimisers and learning-rate schedules: SGD + multi-step (CRD protocol) and AdamW + cosine."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from distillab.config import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, epoch: float, total_epochs: int) -> float:
    """Multiplier of the base lr at a (fractional, 0-based) epoch.

    multistep: gamma^(number of milestones <= completed epochs), constant within an epoch, as
    RepDistiller's ``adjust_learning_rate`` (milestones 150/180/210 of 240 -> lr drops *before*
    epochs 151, 181, 211 in 1-based counting). cosine: half-cosine from 1 to min_lr/lr over the run.
    A linear warm-up from 1% over ``warmup_epochs`` multiplies either.
    """
    if cfg.schedule == "multistep":
        done = math.floor(epoch)
        factor = cfg.gamma ** sum(1 for m in cfg.milestones if done >= m)
    elif cfg.schedule == "cosine":
        floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
        progress = min(max(epoch / max(total_epochs, 1), 0.0), 1.0)
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        factor *= 0.01 + 0.99 * epoch / cfg.warmup_epochs
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR over :func:`lr_factor`; its state (the step count) goes into checkpoints."""
    steps = max(steps_per_epoch, 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step / steps, total_epochs))
