"""Per-epoch metrics: a CSV file always, TensorBoard when it is installed. Rank 0 writes, others do nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from distillab.core.files import write_text_atomic


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` as floats (empty cells left out)."""
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


class MetricsLogger:
    """``metrics.csv`` in ``run_dir`` (rewritten atomically after every row), and TensorBoard / Weights &
    Biases when asked for and installed. Nothing is written before the first row is logged or restored."""

    def __init__(self, run_dir: Path | None, tensorboard: bool = True, enabled: bool = True,
                 wandb_project: str | None = None, config: dict | None = None) -> None:
        self.enabled = enabled and run_dir is not None
        self.run_dir = run_dir
        self.path = run_dir / "metrics.csv" if run_dir is not None else None
        self.rows: list[dict[str, float]] = []
        self.tensorboard, self.wandb_project, self.config = tensorboard, wandb_project, config
        self._tb = None
        self._wandb = None
        self._opened = False

    def _open(self) -> None:
        """The TensorBoard and W&B writers, made on first use (so a run that fails before its first epoch
        leaves no event files behind)."""
        if self._opened or not self.enabled:
            return
        self._opened = True
        if self.wandb_project:
            import wandb  # checked to be installed before the run started

            self._wandb = wandb.init(project=self.wandb_project, name=self.run_dir.name, dir=str(self.run_dir),
                                     config=self.config)
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                return
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def restore(self, rows: list[dict[str, float]]) -> None:
        """Continue from the rows of a checkpoint (rows logged after it are dropped)."""
        self.rows = [dict(r) for r in rows]
        self._write()

    def log(self, row: dict[str, float]) -> None:
        self.rows.append(dict(row))
        if not self.enabled:
            return
        self._open()
        self._write()
        if self._tb is not None:
            step = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch" and value == value:  # skip NaN placeholders
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def _write(self) -> None:
        if not self.enabled:
            return
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
