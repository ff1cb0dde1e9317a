"""Optimisers and learning-rate schedules: SGD + multi-step (CRD protocol) and AdamW + cosine."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from distillab.config import OptimConfig


def build_optimizer(params: Iterable[torch.nn.Parameter] | list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``params``: parameters, or groups (dicts with ``params`` and their own
    ``lr`` / ``weight_decay`` where they differ from ``cfg``). Frozen parameters and empty groups are left out."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        params = [g for g in params if g["params"]]
        if len(params) == 1 and set(params[0]) == {"params"}:
            params = params[0]["params"]  # one plain group: the same optimiser state layout as a parameter list
    else:
        params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
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


class LRSchedule:
    """Sets each parameter group's lr from the fractional epoch through :func:`lr_factor`.

    Driven by epoch progress, not by a step count, so a data schedule that changes the number of steps
    per epoch (RDD sampling, curricula) does not stretch the schedule; resume needs only the base lrs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_epochs: int) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_epochs = total_epochs
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    def set(self, epoch: float) -> None:
        """Set the lr for (0-based, fractional) epoch progress ``epoch``."""
        factor = lr_factor(self.cfg, epoch, self.total_epochs)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = list(state["base_lrs"])


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_epochs: int) -> LRSchedule:
    return LRSchedule(optimizer, cfg, total_epochs)
