"""Before/after check of an engine change: every MNIST-1D config must give the same result.

``record`` trains the MNIST-1D teacher and then every ``configs/mnist1d/*.yaml`` run config through the
command line (one torch thread per run, ``--workers`` runs at once), from the source tree ``--src`` (default:
the installed package), and writes one JSON record per config: last and best test top-1, every train/test
column of the last metrics row at full precision, and a SHA-256 of the final student weights. ``compare``
reads two such files and lists every config whose record differs; it exits 1 if any does.

Typical use around a refactor (the "before" tree is a checkout of the commit before the change)::

    git worktree add /tmp/before HEAD
    python benchmarks/contract_check.py record --src /tmp/before/src --out docs/results/contract_before.json
    python benchmarks/contract_check.py record --like docs/results/contract_before.json --out docs/results/contract_after.json
    python benchmarks/contract_check.py compare docs/results/contract_before.json docs/results/contract_after.json

Results are equal only on the same machine and thread count; the record holds both.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "distillab" / "configs" / "mnist1d"
TEACHER = "teacher_cnn1d.yaml"
COMMON = ["train.tensorboard=false", "train.progress=false", "train.checkpoint_every=100"]


def run_configs() -> list[str]:
    """Every MNIST-1D run config (not the shared ``_*.yaml`` parts, not the teacher, not search spaces)."""
    return sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("_") and p.name != TEACHER
                  and not p.name.endswith(".tune.yaml"))  # search spaces of `distillab tune`, not configs


def _env(src: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _cli(args: list[str], env: dict, log: Path) -> int:
    with open(log, "w") as fh:
        return subprocess.run([sys.executable, "-m", "distillab", *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                              cwd=ROOT).returncode


def weights_digest(model_pt: Path) -> str:
    """SHA-256 over the student's tensors in key order (independent of the pickled metadata)."""
    import torch

    state = torch.load(model_pt, map_location="cpu", weights_only=False)["model"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def read_record(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    last = {k: v for k, v in rows[-1].items() if k.startswith(("train/", "test/")) and v != ""}
    return {"test_top1": summary["test_top1"], "best_top1": summary["best_top1"], "epochs": summary["epochs"],
            "last_row": last, "weights_sha256": weights_digest(run_dir / "model.pt")}


def record(args: argparse.Namespace) -> None:
    env = _env(args.src)
    probe = subprocess.run([sys.executable, "-c", "import distillab; print(distillab.__file__)"], env=env,
                           capture_output=True, text=True, check=True)
    work = Path(tempfile.mkdtemp(prefix="contract-check-"))
    store, out = work / "store", work / "runs"
    common = [*COMMON, f"store={store}", f"out_dir={out}"]
    print(f"distillab from {probe.stdout.strip()}; work folder {work}", flush=True)
    tic = time.perf_counter()
    if _cli(["train-teacher", f"configs/mnist1d/{TEACHER}", *common, "name=teacher"], env, work / "teacher.log"):
        sys.exit(f"teacher training failed: see {work / 'teacher.log'}")
    results: dict[str, dict] = {"teacher": read_record(out / "teacher")}
    only = args.only.split(",") if args.only else None
    if args.like:  # exactly the configs of an earlier record
        only = [n for n in json.loads(Path(args.like).read_text())["runs"] if n != "teacher"]
    names = [n for n in run_configs() if only is None or n.removesuffix(".yaml") in only]

    def one(name: str) -> tuple[str, dict]:
        stem = name.removesuffix(".yaml")
        code = _cli(["distill", f"configs/mnist1d/{name}", *common, f"name={stem}"], env, work / f"{stem}.log")
        rec = read_record(out / stem) if code == 0 else {"error": (work / f"{stem}.log").read_text()[-2000:]}
        print(f"  {stem:16s} {rec.get('test_top1', 'FAILED')}", flush=True)
        return stem, rec

    with ThreadPoolExecutor(args.workers) as pool:
        results.update(dict(pool.map(one, names)))
    meta = {"distillab": probe.stdout.strip(), "python": platform.python_version(), "machine": platform.machine(),
            "threads_per_run": 1, "wall_s": round(time.perf_counter() - tic, 1), "configs": len(names)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": results}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({meta['wall_s']} s)")


def compare(args: argparse.Namespace) -> None:
    before = json.loads(Path(args.before).read_text())["runs"]
    after = json.loads(Path(args.after).read_text())["runs"]
    differ = 0
    print(f"{'config':18s} {'before':>8s} {'after':>8s}  weights  last-row  verdict")
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        if b is None:  # a config added by the change: nothing to compare it with
            print(f"{name:18s} {'-':>8s} {a.get('test_top1')!s:>8s}  new config, not compared")
            continue
        if a is None:
            print(f"{name:18s} only in before: MISSING after")
            differ += 1
            continue
        same_w = b.get("weights_sha256") == a.get("weights_sha256")
        same_row = b.get("last_row") == a.get("last_row")
        same = same_w and same_row and b.get("test_top1") == a.get("test_top1") and "error" not in a
        differ += not same
        print(f"{name:18s} {b.get('test_top1')!s:>8s} {a.get('test_top1')!s:>8s}  {'same' if same_w else 'DIFF':7s}"
              f"  {'same' if same_row else 'DIFF':8s}  {'identical' if same else 'DIFFERENT'}")
    print(f"{len(before) - differ} of {len(before)} identical, {differ} different")
    sys.exit(1 if differ else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train the teacher and every MNIST-1D config; write a JSON record")
    rec.add_argument("--out", required=True)
    rec.add_argument("--src", default=None, help="source folder holding the distillab package to run")
    rec.add_argument("--workers", type=int, default=2)
    rec.add_argument("--only", default=None, help="comma-separated config names (default: all)")
    rec.add_argument("--like", default=None, help="run exactly the configs of this earlier record")
    rec.set_defaults(func=record)
    cmp_ = sub.add_parser("compare", help="compare two records; exit 1 when any config differs")
    cmp_.add_argument("before")
    cmp_.add_argument("after")
    cmp_.set_defaults(func=compare)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
