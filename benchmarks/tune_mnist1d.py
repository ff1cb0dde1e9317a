"""Tuned against published settings on MNIST-1D: `distillab tune` for the methods that lose or are ambiguous.

Each method is tuned on the mnist1d suite's pair (teacher cnn1d width 32 -> student cnn1d_small width 10, the
suite's per-method stage overrides), with its search space ``configs/mnist1d/<method>.tune.yaml``, ``--trials``
trials over ``--workers`` processes (median pruning), 60 epochs per trial as the suite trains. Each study then
trains its best settings and the published ones over seeds 0-4 on the whole training set and compares them on
the test set. KD is tuned too, so "does a method beat KD here" is asked of both at their best.

    python benchmarks/tune_mnist1d.py                      # -> docs/results/tune_mnist1d.json, a markdown table
    python benchmarks/tune_mnist1d.py --methods at,kd --trials 10 --out runs/tune_quick

Studies are resumable: the command can be run again after a stop (finished trials and final runs are kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["kd", "at", "fitnet", "nst", "ft", "crd", "dkd", "rdd"]
PAIR = ["student.arch=cnn1d_small", "student.options={width: 10}", "train.checkpoint_every=10",
        "train.tensorboard=false"]
STAGES = {"at": ["method.params.at.stages=[stage0, stage1]"], "nst": ["method.params.nst.stages=[stage0, stage1]"]}


def tune_one(method: str, args) -> dict:
    out = args.out / method
    cmd = ["distillab", "tune", f"configs/mnist1d/{method}.yaml", *PAIR, *STAGES.get(method, []),
           "--trials", str(args.trials), "--workers", str(args.workers), "--out", str(out),
           "--final-seeds", str(args.final_seeds)]
    print("$", " ".join(cmd), flush=True)
    tic = time.perf_counter()
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(f"{method}: distillab tune failed ({done.returncode})")
    wall = time.perf_counter() - tic
    report = json.loads((out / "report.json").read_text())
    timing = out / "wall_s.json"  # the first (uninterrupted) run's time is the study's cost; reruns add theirs
    spent = json.loads(timing.read_text()) if timing.is_file() else []
    spent.append(wall)
    timing.write_text(json.dumps(spent))
    return {"method": method, "wall_s": sum(spent), **report}


def welch(a: list[float], b: list[float]) -> float | None:
    from distillab.bench.aggregate import welch_p

    return welch_p(a, b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--final-seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("runs/tune_mnist1d"))
    p.add_argument("--json", type=Path, default=Path("docs/results/tune_mnist1d.json"))
    args = p.parse_args()
    results = {m: tune_one(m, args) for m in args.methods.split(",")}

    def fmt(s: dict) -> str:
        return f"{s['mean']:.2f} ± {s['std']:.2f}"

    def pv(p: float | None) -> str:
        return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")

    kd = results.get("kd", {}).get("final")
    lines = ["| method | published settings | tuned | p (tuned vs published) | tuned vs tuned KD (p) | best settings | "
             "trials complete / pruned | wall min |", "|---|---|---|---|---|---|---|---|"]
    for m, r in results.items():
        f = r["final"]
        vs_kd = "-" if m == "kd" or kd is None else \
            f"{f['tuned']['mean'] - kd['tuned']['mean']:+.2f} ({pv(welch(f['tuned']['values'], kd['tuned']['values']))})"
        best = ", ".join(f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
                         for k, v in r["best"]["params"].items())
        lines.append(f"| {m} | {fmt(f['default'])} | {fmt(f['tuned'])} | {pv(f['p'])} | {vs_kd} | {best} | "
                     f"{r['pruning']['complete']} / {r['pruning']['pruned']} | {r['wall_s'] / 60:.1f} |")
    print("\n".join(lines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]),
                                     "trials": args.trials, "workers": args.workers, "results": results},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
