"""Every language-model distillation method on the stdlib corpus (bytes), over seeds: held-out bits per byte.

The teacher is the stored ``configs/lm/teacher_gpt.yaml`` (gpt_small, trained first if the store lacks it);
each row trains the same student (gpt_micro) with the row's config and the common overrides below, and the
sequence-level and offline rows read the data their pipeline step writes once (the teacher's greedy
continuations; its top-32 log-probabilities), shared by the seeds. Finished runs are skipped and interrupted
ones resumed, so the command can be run again after a stop.

    python benchmarks/lm_methods.py --out runs/lm_methods --seeds 0 1 2 --workers 2
    # -> a markdown table on stdout and docs/results/lm_methods_cpu.json
    python benchmarks/lm_methods.py --out runs/lm_methods_3ep --epochs 3 --teacher-cache \
        --json docs/results/lm_methods_cpu_3epochs.json     # three passes, the live teacher once per block

The pipeline steps' data sets depend on the text only (not on the epochs): ``--data-from runs/lm_methods`` reuses
another output folder's instead of making them again.

Reported: last-epoch held-out bits per byte (mean ± sample std over seeds; lower is better), Welch's p
against labels only, perplexity, next-byte top-1 and the training seconds of a run (its epochs' time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# row -> (config, extra overrides, data step or None, description)
ROWS = {
    "ce": ("configs/lm/student_baseline.yaml", [], None, "labels only (next-byte CE)"),
    "lm_fkl": ("configs/lm/kd_gpt.yaml", [], None, "0.5 CE + 0.5 forward KL, T 1"),
    "lm_rkl": ("configs/lm/rkl_gpt.yaml", [], None, "reverse KL alone"),
    "lm_jsd": ("configs/lm/jsd_gpt.yaml", [], None, "generalised JSD (beta 0.5) alone"),
    "lm_tvd": ("configs/lm/tvd_gpt.yaml", [], None, "0.5 CE + 0.5 total variation"),
    "gkd": ("configs/lm/gkd_gpt.yaml", [], None, "on-policy GKD: JSD, lmbda 0.5"),
    "seqkd": ("configs/lm/student_baseline.yaml", [], "generate", "sequence-level KD: CE on the teacher's text"),
    "seqkd_kd": ("configs/lm/kd_gpt.yaml", [], "generate", "sequence-level + token KL on the teacher's text"),
    "offline": ("configs/lm/student_baseline.yaml", ["method.name=lm_offline"], "logits",
                "offline top-32 KL + CE (no live teacher)"),
}
TEACHER = "configs/lm/teacher_gpt.yaml"
DATA_STEPS = {
    "generate": ("lm_generate", {"prompt_len": 32, "decoding": "greedy", "batch_size": 64}),
    "logits": ("teacher_logits", {"k": 32, "dtype": "float16", "batch_size": 64}),
}


def run_one(row: str, seed: int, out: Path, common: list[str], data_path: str | None) -> dict:
    import torch

    from distillab.config import load_config
    from distillab.plan import find_config
    from distillab.runner import run

    torch.set_num_threads(1)
    config, extra, _, _ = ROWS[row]
    folder = out / row / f"seed{seed}"
    summary_file = folder / "summary.json"
    if summary_file.is_file():
        return json.loads(summary_file.read_text())
    overrides = [*common, *extra, f"seed={seed}", f"out_dir={folder.parent}", f"name={folder.name}"]
    if data_path is not None:
        overrides += ["data.name=token_blocks", f"data.options={{path: {data_path}}}"]
    cfg = load_config(find_config(config), overrides)
    partial = (folder / "checkpoints" / "last.pt").is_file()
    summary, _ = run(cfg, resume=folder if partial else None, run_dir=None if partial else folder, progress=False)
    return summary


def make_data(step: str, out: Path, common: list[str]) -> str:
    """The data set of one pipeline step, made once under ``out/data/<step>`` (resumed, reused)."""
    from distillab.pipeline import StepContext
    from distillab.pipeline_lm import lm_generate_step, teacher_logits_step

    folder = out / "data" / step
    done = folder / "outputs.json"
    if done.is_file():
        return json.loads(done.read_text())["data"]
    folder.mkdir(parents=True, exist_ok=True)
    command, params = DATA_STEPS[step]
    data_options = {o.split("=", 1)[0].removeprefix("data.options."): json.loads(o.split("=", 1)[1])
                    for o in common if o.startswith("data.options.")}
    work = lm_generate_step if command == "lm_generate" else teacher_logits_step
    outputs = work({**params, "teacher": {"config": TEACHER}, "data": data_options}, folder, StepContext(report=print))
    done.write_text(json.dumps(outputs))
    return outputs["data"]


def welch(a: list[float], b: list[float]) -> str:
    from distillab.bench.aggregate import welch_p

    p = welch_p(a, b)
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lm_methods"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-bytes", type=int, default=1_000_000, help="training text per epoch (bytes)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--teacher-cache", action="store_true", help="train.teacher_cache: the live teacher runs once "
                        "per block, later epochs read its stored fp32 logits (1 GiB per run at 1 MB)")
    parser.add_argument("--data-from", type=Path, help="an output folder whose data/ (the teacher's generations and "
                        "top-k logits for the same --max-bytes) to reuse")
    parser.add_argument("--json", type=Path, default=Path("docs/results/lm_methods_cpu.json"))
    args = parser.parse_args()
    common = [f"data.options.max_bytes={args.max_bytes}", f"train.epochs={args.epochs}", "train.threads=1",
              "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=1",
              *(["train.teacher_cache=true"] if args.teacher_cache else [])]
    args.out.mkdir(parents=True, exist_ok=True)

    from distillab.config import load_config
    from distillab.plan import find_config
    from distillab.runner import train_missing_teachers

    # the teacher, trained and stored first if the store lacks it (as `distillab distill` would ask for)
    train_missing_teachers(load_config(find_config("configs/lm/kd_gpt.yaml"), common))
    data_out = args.data_from or args.out
    data = {step: make_data(step, data_out, common) for step in {ROWS[r][2] for r in args.rows} if step}

    jobs = [(row, seed) for seed in args.seeds for row in args.rows]
    results: dict[str, list[dict]] = {row: [] for row in args.rows}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_one, row, seed, args.out, common, data.get(ROWS[row][2])): (row, seed)
                   for row, seed in jobs}
        for future, (row, seed) in futures.items():
            summary = future.result()
            results[row].append(summary)
            print(f"{row} seed {seed}: {summary['test_bpb']:.4f} bits per byte, {summary['train_time_s']:.0f} s",
                  flush=True)

    base = [s["test_bpb"] for s in results.get("ce", [])]
    lines = ["| row | bits per byte (mean ± std) | p vs labels only | perplexity | top-1 % | train s / run |",
             "|---|---|---|---|---|---|"]
    table = {}
    for row in args.rows:
        runs = results[row]
        bpb = [s["test_bpb"] for s in runs]

        def mean_std(values: list[float], digits: int) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"

        lines.append(f"| {ROWS[row][3]} (`{row}`) | {mean_std(bpb, 4)} | {welch(bpb, base) if row != 'ce' else '-'} "
                     f"| {mean_std([s['test_ppl'] for s in runs], 3)} | {mean_std([s['test_top1'] for s in runs], 2)} "
                     f"| {statistics.mean(s['train_time_s'] for s in runs):.0f} |")
        table[row] = {"description": ROWS[row][3], "bpb": bpb, "ppl": [s["test_ppl"] for s in runs],
                      "top1": [s["test_top1"] for s in runs], "train_time_s": [s["train_time_s"] for s in runs],
                      "tokens_per_s": [s.get("tokens_per_s") for s in runs]}
    print("\n".join(lines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "overrides": common, "seeds": args.seeds,
                                     "rows": table}, indent=2))


if __name__ == "__main__":
    main()
