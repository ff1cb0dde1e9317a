"""Running sums of one training epoch, kept as tensors on the device (no host sync per step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distillab.core import dist as comm


@dataclass
class EpochState:
    """Samples seen, correct predictions of each trainable model (the student's is ``train/top1``) and the
    sum of every logged loss term, each weighted by its batch size. ``counted``: the predictions that count
    towards top-1 (one per sample for a classifier, one per real token for a language model)."""

    samples: int = 0
    correct: dict[str, torch.Tensor] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counted: torch.Tensor | int = 0

    def add(self, n: int, correct: dict[str, torch.Tensor], total: torch.Tensor, logs: dict[str, torch.Tensor],
            counted: torch.Tensor | int | None = None) -> None:
        self.samples += n
        self.counted = self.counted + (n if counted is None else counted)
        for name, c in correct.items():
            self.correct[name] = c if name not in self.correct else self.correct[name] + c
        for key, value in (("loss", total.detach()), *logs.items()):
            v = value.float() * n
            self.sums[key] = v if key not in self.sums else self.sums[key] + v

    def means(self) -> dict[str, float]:
        n = max(self.samples, 1)
        out = {f"train/{k}": float(v) / n for k, v in self.sums.items()}
        c_n = max(int(self.counted), 1)
        out["train/top1"] = 100.0 * float(self.correct.get("student", 0)) / c_n
        if len(self.correct) > 1:
            out.update({f"train/{name}/top1": 100.0 * float(c) / c_n for name, c in self.correct.items()})
        return out

    def non_finite(self) -> list[str]:
        return [k for k, v in self.sums.items() if not torch.isfinite(v).all()]

    def reduce(self) -> None:
        """Sum the counts and sums over ranks (one collective), so every rank holds the global epoch."""
        if not comm.is_distributed() or not self.correct:
            return
        names, keys = list(self.correct), sorted(self.sums)
        device = next(iter(self.correct.values())).device
        flat = torch.stack([torch.tensor(float(self.samples), device=device),
                            torch.as_tensor(self.counted, device=device).float(),
                            *(self.correct[n].float() for n in names), *(self.sums[k].float() for k in keys)])
        comm.all_reduce_(flat)
        self.samples = int(flat[0].item())
        self.counted = int(flat[1].item())
        self.correct = {n: flat[2 + i] for i, n in enumerate(names)}
        self.sums = {k: flat[2 + len(names) + i] for i, k in enumerate(keys)}
