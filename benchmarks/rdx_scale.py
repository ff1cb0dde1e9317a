"""Time and peak memory of one RDX mining pass (`distillab.rdx.mine`) over N samples.

Teacher and student features are random (ReLU of Gaussian, like pooled post-ReLU activations; the
run time hardly depends on the values), 256-d by default like resnet32x4 / resnet8x4's pooled features.
Each N runs in a fresh subprocess, so peak memory is that process's own:

- CPU: peak resident memory (``resource.getrusage`` ru_maxrss) during ``mine``, as the increase over the
  process's peak before the call (after imports, the features and a small warm-up pass) and as the total;
  both include the result itself (``result_mib``: the (N, pool_k) int64 negative pools, mostly);
- CUDA: ``torch.cuda.max_memory_allocated`` during ``mine``, over what was allocated before.

RDD's on-the-fly pool storage at ImageNet scale: ``--no-pool`` runs the pass it makes before an epoch
(positives, confusion, KNA; no (N, pool_k) table), ``--half`` holds the features in float16 as it stores
them, and ``--batch-rows 64 256`` then times the pools of random batches of that many rows, mined on
their own against the anchors (`distillab.rdx.mining.mine_rows`, what RDD does per batch).

    python benchmarks/rdx_scale.py                         # N = 10,000 and 50,000 on CPU
    python benchmarks/rdx_scale.py --n 10000 --json docs/results/rdx_scale_cpu.json
    python benchmarks/rdx_scale.py --n 50000 --anchors 10000 --json docs/results/rdx_scale_cpu.json --append
    python benchmarks/rdx_scale.py --device cuda --n 50000 --anchors 10000
    python benchmarks/rdx_scale.py --n 1281167 --dim 512 --anchors 1024 --no-pool --half --batch-rows 64 256
    python benchmarks/rdx_scale.py --n 1281167 --dim 512 --anchors 4096 --half --batch-only --batch-rows 64 256

``--batch-threads 1`` times the batches on one thread: on a machine whose cores are shared, two threads
wait for each other at every operation, which on (64 x M) blocks costs more than the work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

import distillab
from distillab.rdx import mine
from distillab.rdx.affinity import resolve_gamma
from distillab.rdx.mining import anchor_columns, anchor_features, mine_rows, select_anchors
from distillab.runner import cpu_name

WARMUP_N = 256  # samples of the untimed first pass that loads the kernels
CHUNK = 65536  # rows of float16 features drawn at a time (no full float32 copy)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def features(n: int, dim: int, generator: torch.Generator, half: bool) -> torch.Tensor:
    """ReLU of standard Gaussian features (n, dim): float32, or float16 drawn a chunk of rows at a time."""
    if not half:
        return torch.randn(n, dim, generator=generator).relu_()
    out = torch.empty(n, dim, dtype=torch.float16)
    for start in range(0, n, CHUNK):
        end = min(start + CHUNK, n)
        out[start:end] = torch.randn(end - start, dim, generator=generator).relu_()
    return out


def time_batches(args: argparse.Namespace, x_teacher: torch.Tensor, x_student: torch.Tensor, result,
                 device: torch.device) -> list[dict]:
    """Milliseconds to mine the pools of random batches on their own (RDD's pools on the fly)."""
    n = x_teacher.shape[0]
    side = anchor_features(x_teacher, x_student, result.anchor_index)  # RDD keeps these between batches
    generator = torch.Generator().manual_seed(args.seed + 1)
    if args.batch_threads:
        torch.set_num_threads(args.batch_threads)
    out = []
    for rows in args.batch_rows:
        times = []
        for repeat in range(args.batch_repeats + 1):  # the first is a warm-up
            index = torch.randint(0, n, (rows,), generator=generator).to(device)
            sync(device)
            tic = time.perf_counter()
            mine_rows(x_teacher[index].float(), x_student[index].float(), anchor_columns(index, result.anchor_index),
                      *side, result.anchor_index, gamma=result.gamma, beta=result.beta, mode=args.mode,
                      abs_max=result.abs_max, pool_k=args.pool_k, kna_k=args.kna_k)
            sync(device)
            if repeat:
                times.append((time.perf_counter() - tic) * 1000.0)
        times.sort()
        out.append({"rows": rows, "repeats": len(times), "median_ms": times[len(times) // 2],
                    "mean_ms": sum(times) / len(times), "min_ms": times[0], "max_ms": times[-1]})
    return out


def measure(args: argparse.Namespace, n: int) -> dict:
    """One timed `mine` over n samples, in this process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    tic = time.perf_counter()
    x_teacher = features(n, args.dim, generator, args.half).to(device)
    x_student = features(n, args.student_dim or args.dim, generator, args.half).to(device)
    feature_seconds = time.perf_counter() - tic
    options = dict(gamma=args.gamma, beta=args.beta, mode=args.mode, pool_k=args.pool_k, kna_k=args.kna_k,
                   anchors=args.anchors, seed=args.seed, block=args.block, need_pool=not args.no_pool)
    mine(x_teacher[:WARMUP_N], x_student[:WARMUP_N], **options)
    if args.batch_only:  # no timed pass: the pools of batches only
        anchor_index = select_anchors(n, args.anchors, args.seed)
        anchor_index = None if anchor_index is None else anchor_index.to(device)
        result = SimpleNamespace(anchor_index=anchor_index, abs_max=None, beta=args.beta,
                                 gamma=resolve_gamma(args.gamma, n if anchor_index is None else len(anchor_index)))
        return {"n": n, "anchors": n if anchor_index is None else len(anchor_index), "dim_teacher": args.dim,
                "dim_student": args.student_dim or args.dim, "mode": args.mode, "gamma": result.gamma,
                "beta": result.beta, "feature_dtype": str(x_teacher.dtype).replace("torch.", ""),
                "features_mib": (x_teacher.nbytes + x_student.nbytes) / 2 ** 20,
                "batch_pools_pool_k": min(args.pool_k, n - 1 if anchor_index is None else len(anchor_index) - 1),
                "batch_threads": args.batch_threads or torch.get_num_threads(),
                "load_average_before": os.getloadavg()[0],
                "batch_pools": time_batches(args, x_teacher, x_student, result, device),
                "load_average_after": os.getloadavg()[0], "peak_rss_mib": max_rss_mib()}

    rss_before = max_rss_mib()
    load_before = os.getloadavg()[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    sync(device)
    tic = time.perf_counter()
    result = mine(x_teacher, x_student, **options)
    sync(device)
    seconds = time.perf_counter() - tic
    rss_peak = max_rss_mib()

    out = {
        "n": n, "anchors": len(result.anchor_index) if result.anchor_index is not None else n,
        "dim_teacher": args.dim, "dim_student": args.student_dim or args.dim, "block": args.block,
        "mode": args.mode, "gamma": result.gamma, "beta": result.beta,
        "pool_k": None if result.negative_pool is None else result.negative_pool.shape[1],
        "pools": "none (need_pool=False)" if args.no_pool else "table",
        "feature_dtype": str(x_teacher.dtype).replace("torch.", ""),
        "kna_k": args.kna_k, "seconds": seconds, "peak_rss_mib": rss_peak,
        "peak_rss_increase_mib": rss_peak - rss_before, "rss_before_mib": rss_before,
        "features_mib": (x_teacher.nbytes + x_student.nbytes) / 2 ** 20, "feature_seconds": feature_seconds,
        "result_mib": sum(getattr(result, name).nbytes for name in ("positive", "negative_pool", "confusion", "kna")
                          if getattr(result, name) is not None) / 2 ** 20,
        "load_average_before": load_before,
    }
    if device.type == "cuda":
        out["cuda_peak_allocated_increase_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2 ** 20
    if args.batch_rows:
        out["batch_pools"] = time_batches(args, x_teacher, x_student, result, device)
        out["batch_pools_pool_k"] = min(args.pool_k, out["anchors"] - 1)
        out["batch_threads"] = args.batch_threads or torch.get_num_threads()
    out["load_average_after"] = os.getloadavg()[0]
    return out


def worker_command(args: argparse.Namespace, n: int) -> list[str]:
    """This script, run for one N with the same options, in a fresh process."""
    cmd = [sys.executable, __file__, "--worker", str(n), "--dim", str(args.dim), "--device", args.device,
           "--block", str(args.block), "--mode", args.mode, "--gamma", str(args.gamma), "--beta", repr(args.beta),
           "--pool-k", str(args.pool_k), "--kna-k", str(args.kna_k), "--seed", str(args.seed)]
    for flag, value in (("--student-dim", args.student_dim), ("--anchors", args.anchors),
                        ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += [flag for flag, on in (("--no-pool", args.no_pool), ("--half", args.half)) if on]
    if args.batch_rows:
        cmd += ["--batch-rows", *map(str, args.batch_rows), "--batch-repeats", str(args.batch_repeats)]
    if args.batch_threads:
        cmd += ["--batch-threads", str(args.batch_threads)]
    if args.batch_only:
        cmd += ["--batch-only"]
    return cmd


def parse_gamma(text: str) -> float | str:
    return text if text == "auto" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10000, 50000], help="sample counts, one run each")
    parser.add_argument("--dim", type=int, default=256, help="teacher feature dimension")
    parser.add_argument("--student-dim", type=int, default=None, help="student feature dimension (default: --dim)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--block", type=int, default=512, help="rows per block of `mine`")
    parser.add_argument("--anchors", type=int, default=None, help="random anchors (default: all N samples)")
    parser.add_argument("--mode", default="local", choices=["local", "standard"])
    parser.add_argument("--gamma", type=parse_gamma, default=0.1, help="a number or 'auto' (80 / anchors)")
    parser.add_argument("--beta", type=float, default=5.0)
    parser.add_argument("--pool-k", type=int, default=1024)
    parser.add_argument("--kna-k", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42, help="seed of the features and of the anchors")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-pool", action="store_true",
                        help="skip the negative pools (need_pool=False: RDD's pass before an epoch on the fly)")
    parser.add_argument("--half", action="store_true", help="hold the features in float16 (RDD on the fly)")
    parser.add_argument("--batch-rows", type=int, nargs="*", default=[],
                        help="then time the pools of random batches of these many rows, mined on their own")
    parser.add_argument("--batch-repeats", type=int, default=20, help="timed batches per --batch-rows size")
    parser.add_argument("--batch-threads", type=int, default=None,
                        help="torch CPU threads for the batch timings (default: --threads)")
    parser.add_argument("--batch-only", action="store_true",
                        help="time the batches' pools only, without the pass over all N (mode local)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--append", action="store_true", help="add to the --json file's reports, not replace them")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # one N, in this process
    args = parser.parse_args()
    if args.batch_only and (not args.batch_rows or args.mode != "local"):
        parser.error("--batch-only needs --batch-rows and mode local")

    if args.worker is not None:
        print(json.dumps(measure(args, args.worker)))
        return

    runs = []
    for n in args.n:
        proc = subprocess.run(worker_command(args, n), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"the run for N = {n} failed (exit code {proc.returncode})")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(run)
        if not args.batch_only:
            print(f"N = {n:>6}: {run['seconds']:8.1f} s, peak RSS {run['peak_rss_mib']:8.0f} MiB "
                  f"(+{run['peak_rss_increase_mib']:.0f} MiB during mine)", flush=True)
        for batch in run.get("batch_pools", []):
            print(f"    pools of {batch['rows']} rows on their own: {batch['median_ms']:.1f} ms (median of "
                  f"{batch['repeats']})", flush=True)

    device = torch.device(args.device)
    report = {
        "benchmark": ("distillab.rdx.mining.mine_rows, pools of random batches only" if args.batch_only
                      else "distillab.rdx.mine, one pass") + ", random features (ReLU of Gaussian)"
                     + (", no pools" if args.no_pool and not args.batch_only else "")
                     + (", float16 features" if args.half else ""),
        "command": "python benchmarks/rdx_scale.py " + " ".join(sys.argv[1:]),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_name()),
        "threads": args.threads or torch.get_num_threads(), "seed": args.seed, "runs": runs,
        "versions": {"distillab": distillab.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        saved = {"reports": []}
        if args.append and os.path.exists(args.json):
            with open(args.json) as fh:
                saved = json.load(fh)  # other keys (notes) are kept
        saved["reports"] = [*saved.get("reports", []), report]
        with open(args.json, "w") as fh:
            json.dump(saved, fh, indent=2)
            fh.write("\n")

if __name__ == "__main__":
    main()
