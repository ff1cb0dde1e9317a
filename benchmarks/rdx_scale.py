"""Time and peak memory of one RDX mining pass (`distillab.rdx.mine`) over N samples.

Teacher and student features are random (ReLU of Gaussian, like pooled post-ReLU activations; the
run time hardly depends on the values), 256-d by default like resnet32x4 / resnet8x4's pooled features.
Each N runs in a fresh subprocess, so peak memory is that process's own:

- CPU: peak resident memory (``resource.getrusage`` ru_maxrss) during ``mine``, as the increase over the
  process's peak before the call (after imports, the features and a small warm-up pass) and as the total;
  both include the result itself (``result_mib``: the (N, pool_k) int64 negative pools, mostly);
- CUDA: ``torch.cuda.max_memory_allocated`` during ``mine``, over what was allocated before.

    python benchmarks/rdx_scale.py                         # N = 10,000 and 50,000 on CPU
    python benchmarks/rdx_scale.py --n 10000 --json docs/results/rdx_scale_cpu.json
    python benchmarks/rdx_scale.py --n 50000 --anchors 10000 --json docs/results/rdx_scale_cpu.json --append
    python benchmarks/rdx_scale.py --device cuda --n 50000 --anchors 10000
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

import torch

import distillab
from distillab.rdx import mine
from distillab.runner import cpu_name

WARMUP_N = 256  # samples of the untimed first pass that loads the kernels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def measure(args: argparse.Namespace, n: int) -> dict:
    """One timed `mine` over n samples, in this process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    x_teacher = torch.randn(n, args.dim, generator=generator).relu_().to(device)
    x_student = torch.randn(n, args.student_dim or args.dim, generator=generator).relu_().to(device)
    options = dict(gamma=args.gamma, beta=args.beta, mode=args.mode, pool_k=args.pool_k, kna_k=args.kna_k,
                   anchors=args.anchors, seed=args.seed, block=args.block)
    mine(x_teacher[:WARMUP_N], x_student[:WARMUP_N], **options)

    rss_before = max_rss_mib()
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
        "mode": args.mode, "gamma": result.gamma, "beta": result.beta, "pool_k": result.negative_pool.shape[1],
        "kna_k": args.kna_k, "seconds": seconds, "peak_rss_mib": rss_peak,
        "peak_rss_increase_mib": rss_peak - rss_before, "rss_before_mib": rss_before,
        "features_mib": (x_teacher.nbytes + x_student.nbytes) / 2 ** 20,
        "result_mib": sum(getattr(result, name).nbytes
                          for name in ("positive", "negative_pool", "confusion", "kna")) / 2 ** 20,
        "load_average_before": os.getloadavg()[0],
    }
    if device.type == "cuda":
        out["cuda_peak_allocated_increase_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_before) / 2 ** 20
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
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--append", action="store_true", help="add to the --json file's reports, not replace them")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # one N, in this process
    args = parser.parse_args()

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
        print(f"N = {n:>6}: {run['seconds']:8.1f} s, peak RSS {run['peak_rss_mib']:8.0f} MiB "
              f"(+{run['peak_rss_increase_mib']:.0f} MiB during mine)", flush=True)

    device = torch.device(args.device)
    report = {
        "benchmark": "distillab.rdx.mine, one pass, random features",
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
        reports = []
        if args.append and os.path.exists(args.json):
            with open(args.json) as fh:
                reports = json.load(fh)["reports"]
        with open(args.json, "w") as fh:
            json.dump({"reports": [*reports, report]}, fh, indent=2)
            fh.write("\n")

if __name__ == "__main__":
    main()
