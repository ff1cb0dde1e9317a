"""The local teacher store: trained teachers keyed by (data set, architecture, training config).

``distillab train-teacher CONFIG`` fills it; ``distill`` finds a teacher in it from the same CONFIG
(``teacher.config``). Layout: ``<store>/<data>/<arch>/<key>/{model.pt, config.yaml, summary.json}``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from distillab.config import RunConfig, to_yaml
from distillab.core.files import copy_atomic, write_json_atomic, write_text_atomic

# Settings that change where data lives or how fast it is read, not what is learned: not in the key.
_UNKEYED_DATA = {"root", "download", "on_device", "num_workers"}
_UNKEYED_TRAIN = {"device", "progress", "tensorboard", "checkpoint_every", "eval_every", "eval_batch_size",
                  "compile", "sync_bn", "teacher_cache", "teacher_cache_dtype", "teacher_cache_max_gb"}
# Settings added later: in the key only when set away from their default, so older keys stay valid.
_KEYED_UNLESS_DEFAULT = {"data": {"augment_variants": None}, "method": {"step": None},
                         "student": {"input": "input", "lr": None, "weight_decay": None}}


def default_store() -> Path:
    home = os.environ.get("DISTILLAB_HOME")
    return Path(home) / "teachers" if home else Path.home() / ".distillab" / "teachers"


def teacher_key(cfg: RunConfig) -> str:
    """A short hash of everything that shapes the trained teacher."""
    d = cfg.model_dump(mode="json")
    for section, defaults in _KEYED_UNLESS_DEFAULT.items():
        for key, default in defaults.items():
            if d[section].get(key, default) == default:
                d[section].pop(key, None)
    material = {
        "data": {k: v for k, v in d["data"].items() if k not in _UNKEYED_DATA},
        "model": {k: v for k, v in d["student"].items() if k != "checkpoint"},
        "method": d["method"], "optim": d["optim"],
        "train": {k: v for k, v in d["train"].items() if k not in _UNKEYED_TRAIN},
        "seed": d["seed"],
    }
    return hashlib.sha1(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]


class TeacherStore:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_store()

    def folder(self, cfg: RunConfig) -> Path:
        return self.root / cfg.data.name / cfg.student.arch / teacher_key(cfg)

    def find(self, cfg: RunConfig) -> Path | None:
        path = self.folder(cfg) / "model.pt"
        return path if path.is_file() else None

    def put(self, cfg: RunConfig, model_file: Path, summary: dict) -> Path:
        """Copy a trained model into the store (atomically: copy to a temp name, then rename)."""
        folder = self.folder(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        copy_atomic(model_file, folder / "model.pt")
        write_text_atomic(folder / "config.yaml", to_yaml(cfg))
        write_json_atomic(folder / "summary.json", summary)
        return folder / "model.pt"

    def entries(self) -> list[dict]:
        out = []
        for summary in sorted(self.root.glob("*/*/*/summary.json")):
            data = json.loads(summary.read_text())
            out.append({"data": summary.parts[-4], "arch": summary.parts[-3], "key": summary.parts[-2],
                        "test_top1": data.get("test_top1"), "path": str(summary.parent / "model.pt")})
        return out
