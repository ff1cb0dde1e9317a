"""Launched by tests/test_ddp.py under torchrun: one run, then each rank's final state to <out>/rank<r>.pt.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py CONFIG OUT [--resume DIR]
        [key=value ...]

Every rank saves its trained models' weights and its objective's state (memory banks, queues, mined tables,
generator states), so the test can check that the ranks agree and compare them with a single process.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from distillab import runner
from distillab.config import load_config


class StateDumpingTrainer(runner.Trainer):
    out: Path

    def train_epoch(self, epoch, progress=None, **kwargs):
        order = self.train_loader._order()  # this process's samples, before the epoch runs
        self.seen = getattr(self, "seen", []) + [order.tolist()]
        state = super().train_epoch(epoch, progress, **kwargs)
        self.global_samples = getattr(self, "global_samples", []) + [state.samples]
        return state

    def fit(self, progress_factory=None, **kwargs):
        summary = super().fit(progress_factory, **kwargs)
        torch.save({"model": self.student.state_dict(), "objective": self.objective.state_dict(),
                    "models": {m.name: m.module.state_dict() for m in self.models.trainable},
                    "summary": summary, "seen": self.seen, "global_samples": self.global_samples},
                   self.out / f"rank{self.dist.rank}.pt")
        return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    StateDumpingTrainer.out = args.out
    runner.Trainer = StateDumpingTrainer
    cfg = load_config(args.config, args.overrides)
    summary, run_dir = runner.run(cfg, resume=args.resume, progress=False, run_dir=None)
    if int(os.environ.get("RANK", 0)) == 0:
        (args.out / "run_dir.txt").write_text(str(run_dir))


if __name__ == "__main__":
    main()
