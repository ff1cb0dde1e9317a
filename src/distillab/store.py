"""The local teacher store: trained teachers keyed by (data set, architecture, training config).

``distillab train-teacher CONFIG`` fills it; ``distill`` finds a teacher in it from the same CONFIG
(``teacher.config``). Layout: ``<store>/<data>/<arch>/<key>/`` holding ``model.pt``, ``config.yaml`` (the
resolved config), ``summary.json`` (the run's) and ``record.json`` (where it came from: config file,
overrides, run folder, time, versions). An entry is never overwritten: ``train-teacher --replace`` first
moves it to ``<key>/replaced-<UTC time>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distillab.config import (ConfigError, RunConfig, expand_shorthand, flatten_settings, load_config, load_yaml,
                              parse_override, to_yaml)
from distillab.core.files import copy_atomic, write_json_atomic, write_text_atomic

# Settings that change where data lives or how fast it is read, not what is learned: not in the key.
_UNKEYED_DATA = {"root", "download", "on_device", "num_workers"}
_UNKEYED_TRAIN = {"device", "progress", "tensorboard", "checkpoint_every", "eval_every", "eval_batch_size",
                  "compile", "sync_bn", "teacher_cache", "teacher_cache_dtype", "teacher_cache_max_gb", "threads"}
# Top-level settings outside the key: naming and placing the run, and models a teacher run does not have.
_UNKEYED_TOP = {"name", "out_dir", "store", "teacher", "models"}
# Settings added later: in the key only when set away from their default, so older keys stay valid.
_KEYED_UNLESS_DEFAULT = {"data": {"augment_variants": None, "val_fraction": None, "val_seed": 0},
                         "method": {"step": None},
                         "student": {"input": "input", "lr": None, "weight_decay": None, "optim": None}}

RECORD = "record.json"
MODEL = "model.pt"
_SHOWN_CANDIDATES = 3  # a miss lists the closest few stored teachers, not the whole store
_SHOWN_DIFFERENCES = 4  # and the first few settings each differs in
_UNSET = object()  # a setting one of two configs does not have


class StoreError(ConfigError):
    """A store folder or entry that cannot be used as it is; the message names the path and the fix."""


def default_store() -> Path:
    home = os.environ.get("DISTILLAB_HOME")
    return Path(home) / "teachers" if home else Path.home() / ".distillab" / "teachers"


def _material(cfg: RunConfig, drop_defaults: bool = True) -> dict:
    """Everything that shapes the trained teacher (``model`` is the student section)."""
    d = cfg.model_dump(mode="json")
    if drop_defaults:
        for section, defaults in _KEYED_UNLESS_DEFAULT.items():
            for key, default in defaults.items():
                if d[section].get(key, default) == default:
                    d[section].pop(key, None)
    return {
        "data": {k: v for k, v in d["data"].items() if k not in _UNKEYED_DATA},
        "model": {k: v for k, v in d["student"].items() if k != "checkpoint"},
        "method": d["method"], "optim": d["optim"],
        "train": {k: v for k, v in d["train"].items() if k not in _UNKEYED_TRAIN},
        "seed": d["seed"],
    }


def teacher_key(cfg: RunConfig) -> str:
    """A short hash of everything that shapes the trained teacher."""
    return hashlib.sha1(json.dumps(_material(cfg), sort_keys=True).encode()).hexdigest()[:12]


def _show(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Difference:
    """One keyed setting where a stored teacher's config differs from the one asked for."""

    key: str  # dotted, as in an override: train.epochs, data.options.num_samples, model.options.width, seed
    stored: Any
    asked: Any

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.stored)} (asked {_show(self.asked)})"


def differences(stored: RunConfig, asked: RunConfig) -> list[Difference]:
    """The keyed settings in which ``stored`` differs from ``asked``, field by field (defaults filled in)."""
    a, s = flatten_settings(_material(asked, drop_defaults=False)), flatten_settings(_material(stored, drop_defaults=False))
    keys = list(a) + [k for k in s if k not in a]
    return [Difference(k, s.get(k, _UNSET), a.get(k, _UNSET)) for k in keys if s.get(k, _UNSET) != a.get(k, _UNSET)]


def _override_key(text: str) -> list[str]:
    """The dotted path an override sets, shorthand expanded and the model section called ``model``."""
    path = expand_shorthand(parse_override(text)[0])
    return ["model", *path[1:]] if path[0] == "student" else path


def _is_keyed(path: list[str]) -> bool:
    head, rest = path[0], path[1:]
    if head in _UNKEYED_TOP:
        return False
    unkeyed = {"data": _UNKEYED_DATA, "train": _UNKEYED_TRAIN, "model": {"checkpoint"}}.get(head, set())
    return not (rest and rest[0] in unkeyed)


def keyed_overrides(overrides: list[str]) -> list[str]:
    """The overrides that change what is learned (those in the key): no run folders, devices, progress bars."""
    return [o for o in overrides if _is_keyed(_override_key(o))]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _same_config(a: str, b: str) -> bool:
    """Two config paths naming the same file (as given, or once found like ``distill`` finds them)."""
    if a == b:
        return True
    from distillab.plan import find_config

    try:
        return find_config(a).resolve() == find_config(b).resolve()
    except ConfigError:  # a file since moved or deleted: only the text as given can match
        return False


@dataclass
class StoredTeacher:
    """One entry of the store as far as it can be read; ``error`` says why it cannot be used."""

    folder: Path
    record: dict = field(default_factory=dict)  # record.json; for older entries filled from config.yaml/summary.json
    summary: dict = field(default_factory=dict)  # the training run's summary.json
    recorded: bool = True  # False: stored before record.json existed (config file and overrides unknown)
    error: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / MODEL

    @property
    def key(self) -> str:
        return self.folder.name

    @property
    def data(self) -> str:
        return self.folder.parent.parent.name

    @property
    def arch(self) -> str:
        return self.folder.parent.name

    def describe(self) -> str:
        """top-1, when trained and where: the line that names a stored teacher in messages."""
        top1 = self.record.get("test_top1")
        trained = self.trained()
        return (f"test top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else "test top-1 unknown") + \
               (f", trained {trained}" if trained else "") + f", {self.path}"

    def trained(self) -> str | None:
        """When it was trained, to the minute: ``2024-05-01 12:00 UTC``."""
        when = self.record.get("trained_at")
        return f"{when[:16].replace('T', ' ')} UTC" if isinstance(when, str) else None


@dataclass
class Candidate:
    """A stored teacher of the asked data set and architecture, and the keyed settings it differs in."""

    entry: StoredTeacher
    differences: list[Difference]

    def describe(self) -> str:
        shown = ", ".join(str(d) for d in self.differences[:_SHOWN_DIFFERENCES]) or "no keyed setting"
        more = len(self.differences) - _SHOWN_DIFFERENCES
        return shown + (f" and {more} more" if more > 0 else "")


def _fix(folder: Path) -> str:
    return f": train it again with `distillab train-teacher ... --replace`, or move {folder} out of the store"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}){_fix(path.parent)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} cannot be read ({exc}){_fix(path.parent)}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} holds a JSON {type(data).__name__}, not an object{_fix(path.parent)}")
    return data


def _record(cfg: RunConfig, key: str, summary: dict, *, config: str | None, overrides: list[str] | None,
            trained_at: str, versions: dict) -> dict:
    return {"config": config, "overrides": overrides, "key": key,
            "data": cfg.data.name, "data_options": cfg.data.options,
            "arch": cfg.student.arch, "options": cfg.student.options,
            "test_top1": summary.get("test_top1"), "trained_at": trained_at, "run": summary.get("run"),
            "versions": {k: versions.get(k) for k in ("distillab", "torch")}}


class TeacherStore:
    """Trained teachers under ``root`` (default :func:`default_store`), found by their training config."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_store()

    def folder(self, cfg: RunConfig) -> Path:
        return self.root / cfg.data.name / cfg.student.arch / teacher_key(cfg)

    def _check_folders(self, folder: Path | None = None) -> None:
        """The store's folders down to ``folder`` are folders (or not there yet): none of them is a file."""
        path = folder or self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        if not path.is_dir():
            raise StoreError(f"teacher store folder {path} is a file: move it away, or set `store=` "
                             "(or DISTILLAB_HOME) to another folder")

    def find(self, cfg: RunConfig) -> Path | None:
        folder = self.folder(cfg)
        self._check_folders(folder)
        path = folder / MODEL
        return path if path.is_file() else None

    def get(self, cfg: RunConfig) -> StoredTeacher | None:
        """The stored entry for this config (possibly unreadable: see ``error``), or None."""
        found = self.find(cfg)
        return self.read(found.parent) if found is not None else None

    def read(self, folder: Path) -> StoredTeacher:
        """An entry folder's record; what makes it unusable goes to ``error`` (one line: path and fix)."""
        entry = StoredTeacher(folder)
        try:
            if not (folder / MODEL).is_file():
                raise StoreError(f"{folder} holds no {MODEL}{_fix(folder)}")
            if (folder / "summary.json").exists():
                entry.summary = _read_json(folder / "summary.json")
            if (folder / RECORD).exists():
                entry.record = _read_json(folder / RECORD)
            elif not (folder / "summary.json").exists():
                raise StoreError(f"{folder} holds neither {RECORD} nor summary.json{_fix(folder)}")
            else:  # stored before record.json: what config.yaml and summary.json tell
                trained = datetime.fromtimestamp((folder / MODEL).stat().st_mtime, timezone.utc)
                entry.record = _record(self._config(folder), folder.name, entry.summary, config=None, overrides=None,
                                       trained_at=trained.isoformat(timespec="seconds"),
                                       versions=entry.summary.get("versions") or {})
                entry.recorded = False
        except StoreError as exc:
            entry.error = str(exc)
        return entry

    def _config(self, folder: Path) -> RunConfig:
        try:
            return load_config(folder / "config.yaml")
        except ConfigError as exc:
            raise StoreError(f"{folder / 'config.yaml'}: {exc}{_fix(folder)}") from None

    def put(self, cfg: RunConfig, model_file: Path, summary: dict, *, config: str | None = None,
            overrides: list[str] | None = None) -> Path:
        """Copy a trained model into the store with its config, summary and record; an existing entry is
        refused (:meth:`set_aside` it first to replace it). Every file is written atomically, model.pt last:
        an entry whose model.pt is there is complete."""
        from distillab.runner import versions

        folder = self.folder(cfg)
        self.refuse_stored(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "config.yaml", to_yaml(cfg))
        write_json_atomic(folder / "summary.json", summary)
        write_json_atomic(folder / RECORD, _record(cfg, folder.name, summary, config=config,
                                                   overrides=list(overrides) if overrides is not None else None,
                                                   trained_at=_now(), versions=summary.get("versions") or versions()))
        copy_atomic(model_file, folder / MODEL)
        return folder / MODEL

    def refuse_stored(self, cfg: RunConfig) -> None:
        """A StoreError (one line: what is stored and the fix) when the store holds this config already."""
        entry = self.get(cfg)
        if entry is not None:
            what = f"unreadable: {entry.error}" if entry.error else entry.describe()
            raise StoreError(f"the teacher store already holds this config ({what}): add --replace to train it "
                             "again and replace it (the old one is kept aside), or --no-store to train without storing")

    def set_aside(self, cfg: RunConfig) -> Path | None:
        """Move the entry's files to ``<entry>/replaced-<UTC time>/`` (never deleted); that folder, or None."""
        folder = self.folder(cfg)
        self._check_folders(folder)
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
        if not files:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside, n = folder / f"replaced-{stamp}", 1
        while aside.exists():
            n += 1
            aside = folder / f"replaced-{stamp}-{n}"
        aside.mkdir()
        for path in sorted(files, key=lambda p: p.name != MODEL):  # model.pt first: the entry is gone at once
            os.replace(path, aside / path.name)
        return aside

    def entries(self) -> list[StoredTeacher]:
        """Every entry folder (``<data>/<arch>/<key>``), readable or not."""
        self._check_folders()
        if not self.root.is_dir():
            return []
        return [self.read(f) for f in sorted(self.root.glob("*/*/*"))
                if f.is_dir() and not any(p.startswith(".") for p in f.relative_to(self.root).parts)]

    def candidates(self, cfg: RunConfig, config: str | None = None) -> list[Candidate]:
        """Readable stored teachers of ``cfg``'s data set and architecture (and config file ``config`` where
        their record names one), closest first, each with the keyed settings it differs in."""
        base = self.root / cfg.data.name / cfg.student.arch
        self._check_folders(base)
        out = []
        for folder in sorted(base.iterdir()) if base.is_dir() else []:
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            entry = self.read(folder)
            if entry.error is not None:
                continue
            recorded = entry.record.get("config")
            if config is not None and recorded and not _same_config(config, recorded):
                continue
            try:
                stored = self._config(folder)
            except StoreError:  # its config.yaml no longer validates: `list teachers` shows it
                continue
            out.append(Candidate(entry, differences(stored, cfg)))
        out.sort(key=lambda c: c.entry.record.get("trained_at") or "", reverse=True)  # newest first among equals
        out.sort(key=lambda c: (len(c.differences), not c.entry.recorded))  # then those that say where they came from
        return out

    def selecting_overrides(self, candidate: Candidate, config: str, overrides: list[str]) -> list[str] | None:
        """Overrides that, with ``config``, find ``candidate`` in the store (checked), or None if there are none:
        the asked keyed overrides with the differing settings set to the stored values, else its recorded ones."""
        from distillab.plan import find_config

        path = find_config(config)
        section = "student" if "student" in load_yaml(path) else "model"

        def as_override(d: Difference) -> str:
            head, _, rest = d.key.partition(".")
            return f"{section if head == 'model' else head}{'.' + rest if rest else ''}={json.dumps(d.stored)}"

        tries = []
        if all(d.stored is not _UNSET for d in candidate.differences):
            changed = {d.key: d for d in candidate.differences}
            out, done = [], set()
            for o in keyed_overrides(overrides):
                key = ".".join(_override_key(o))
                if key in changed:
                    out.append(as_override(changed[key]))
                    done.add(key)
                elif not any(k.startswith(key + ".") for k in changed):  # a whole mapping set: let the diffs say
                    out.append(o)
            tries.append(out + [as_override(d) for k, d in changed.items() if k not in done])
        if candidate.entry.record.get("overrides") is not None and candidate.entry.record.get("config"):
            tries.append(keyed_overrides(candidate.entry.record["overrides"]))
        for attempt in tries:
            try:
                if teacher_key(load_config(path, attempt)) == candidate.entry.key:
                    return attempt
            except ConfigError:
                continue
        return None

    def miss_message(self, cfg: RunConfig, config: str, overrides: list[str], section: str = "teacher") -> str:
        """Why ``config`` + ``overrides`` is not in the store: the closest stored teachers and how to use one
        (the exact ``overrides`` that select it, or its checkpoint), or how to train it."""
        asked = f"{config}" + (f" + {' '.join(overrides)}" if overrides else "")
        lines = [f"no teacher trained with {asked} in the store {self.root}"]
        train = shlex.join(["distillab", "train-teacher", config, *overrides])
        found = self.candidates(cfg, config)
        if not found:
            lines.append(f"the store holds no {cfg.student.arch} teacher on {cfg.data.name} from this config: "
                         f"train it: `{train}` (or set {section}.checkpoint)")
            return "\n".join(lines)
        lines.append(f"stored {cfg.student.arch} teachers on {cfg.data.name} differ in:")
        lines += [f"  {c.entry.key}: {c.describe()}" for c in found[:_SHOWN_CANDIDATES]]
        if len(found) > _SHOWN_CANDIDATES:
            lines.append(f"  ... and {len(found) - _SHOWN_CANDIDATES} more (`distillab list teachers`)")
        best = found[0]
        selecting = self.selecting_overrides(best, config, overrides)
        use = (shlex.quote(f"{section}.overrides={json.dumps(selecting)}") + " or " if selecting is not None else "")
        lines.append(f"to use {best.entry.key} add {use}{section}.checkpoint={best.entry.path}; "
                     f"or train it: `{train}`")
        return "\n".join(lines)
