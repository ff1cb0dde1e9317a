"""Reasoning-trace distillation at CPU scale: does a small model learn more from a teacher's work than from its answers?

DeepSeek-R1's distilled models (DeepSeek-AI 2025, arXiv 2501.12948, section 2.4) are small models fine-tuned on a
large model's reasoning traces. Here, on 3- and 4-digit additions (data set ``arith``, characters):

1. a teacher (gpt_micro) learns the worked solutions (``configs/arith/teacher_trace.yaml``); its exact-match
   accuracy on the 1000 held-out problems is reported;
2. it writes, greedily, its work and answer for every training prompt (sequence-level KD: the student learns the
   teacher's outputs, not the ground truth); a second file keeps only its final answers. An output with no
   answer is dropped from both files, so that both hold the same prompts;
3. the same student (gpt_nano, ``configs/arith/student_trace.yaml``) is trained three ways, with the same
   epochs over the same prompts (so the same optimizer steps; a trace sample holds ~8x the tokens of an answer):
   ``trace`` on the teacher's traces, ``answer`` on the teacher's answers only, ``labels`` on the true answers;
4. each student's final answers, greedily generated, are scored by exact match on the held-out problems, for
   every seed: mean and standard deviation.

Every training run goes through the engine (run folders under ``--out``, metrics, checkpoints): run the script
again and finished runs are reused, interrupted ones resumed. The table goes to stdout, progress to stderr, and
the results with the command, device, versions and config to ``--json``.

    python benchmarks/reasoning_traces.py                     # ~10 minutes on 2 CPU cores
    python benchmarks/reasoning_traces.py --seeds 0 --student-epochs 2 --num-train 2000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from distillab.config import load_config
from distillab.data import build_dataset
from distillab.data.arith import EOS, decode, final_answer, problems, save_generated
from distillab.data.base import IGNORE_INDEX
from distillab.exact_match import complete, exact_match, longest_output
from distillab.models import load_model
from distillab.plan import find_config
from distillab.runner import cpu_name, run, versions

TEACHER_CONFIG = "configs/arith/teacher_trace.yaml"
STUDENT_CONFIG = "configs/arith/student_trace.yaml"
CONDITIONS = {  # student row -> (what it trains on, the format it writes)
    "trace": ("the teacher's traces and answers", "trace"),
    "answer": ("the teacher's final answers only", "answer"),
    "labels": ("the true answers only", "answer"),
}
TEACHER_TARGET = 95.0  # % exact match under which the teacher is flagged as too weak to distil from


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reasoning_traces"),
                        help="run folders and generated training sets")
    parser.add_argument("--json", type=Path, default=Path("docs/results/reasoning_traces.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    parser.add_argument("--teacher", default=None, help="teacher architecture (default: the config's, gpt_micro)")
    parser.add_argument("--student", default=None, help="student architecture (default: the config's, gpt_nano)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default: the config's (6)")
    parser.add_argument("--student-epochs", type=int, default=None, help="default: the config's (10)")
    parser.add_argument("--num-train", type=int, default=None, help="training problems (default: the config's, 10000)")
    parser.add_argument("--num-test", type=int, default=None, help="held-out problems (default: the config's, 1000)")
    parser.add_argument("--digits", type=int, nargs=2, default=None, metavar=("LO", "HI"),
                        help="operand digits (default: the config's, 3 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on shared cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=512, help="prompts generated at once")
    return parser.parse_args(argv)


def overrides(args: argparse.Namespace, section: str, arch: str | None, epochs: int | None) -> list[str]:
    data = [f"data.options.{k}={v}" for k, v in (("num_train", args.num_train), ("num_test", args.num_test),
                                                 ("digits", args.digits and list(args.digits))) if v is not None]
    return [*data, *([f"{section}.arch={arch}"] if arch else []), *([f"train.epochs={epochs}"] if epochs else []),
            f"train.threads={args.threads}", f"train.device={args.device}", "train.progress=false",
            "train.tensorboard=false"]


def train(cfg, folder: Path, label: str, console: Console) -> dict:
    """The summary of the run in ``folder``: trained there, resumed there, or read back when finished."""
    def report(msg: str) -> None:
        say(console, msg)

    if (folder / "checkpoints" / "last.pt").is_file():
        return run(cfg, resume=folder, console=console, report=report, label=label)[0]
    if folder.exists():
        raise SystemExit(f"{folder} holds an unfinished run with no checkpoint: delete it and run again")
    return run(cfg, run_dir=folder, console=console, report=report, label=label)[0]


def say(console: Console, msg: str) -> None:
    console.print(msg, soft_wrap=True, highlight=False, markup=False)


def data_of(cfg):
    return build_dataset(cfg.data.name, cfg.data.root, **cfg.data.options)


def label_tokens(bundle) -> int:
    return int((bundle.train.labels != IGNORE_INDEX).sum())


def write_set(path: Path, texts: list[str], fmt: str) -> None:
    """Write a generated training set; refuse to change one that finished student runs may have read."""
    if path.is_file() and json.loads(path.read_text()).get("texts") != texts:
        raise SystemExit(f"{path} holds other teacher outputs than this teacher writes now (its settings changed): "
                         "run with a fresh --out")
    save_generated(path, texts, task="add", format=fmt, meta={"teacher": str(path.parent / "teacher" / "model.pt")})


def write_teacher_sets(teacher, bundle, out: Path, args: argparse.Namespace, console: Console) -> dict:
    """The teacher's greedy outputs for every training prompt, as two files for data option ``from_file``:
    its traces (prompt, work, answer) and its final answers alone; how they compare to the truth."""
    train = problems(bundle.train)
    tic = time.perf_counter()
    outputs = [decode(c) for c in complete(teacher, [p.prompt_ids() for p in train], longest_output(train, "trace"),
                                           batch_size=args.batch_size)]
    answers = [final_answer(o, "trace") for o in outputs]
    kept = [i for i, a in enumerate(answers) if a is not None]
    if not kept:
        raise SystemExit("the teacher wrote no answer for any training prompt: train it longer (--teacher-epochs)")
    write_set(out / "teacher_traces.json", [train[i].prompt + outputs[i] for i in kept], "trace")
    write_set(out / "teacher_answers.json", [train[i].prompt + answers[i] + EOS for i in kept], "answer")
    traces_right = sum(outputs[i] == train[i].text("trace")[len(train[i].prompt):] for i in kept)
    result = {"prompts": len(train), "kept": len(kept), "dropped_no_answer": len(train) - len(kept),
              "answers_right_pct": 100.0 * sum(answers[i] == train[i].answer for i in kept) / len(train),
              "traces_exact_pct": 100.0 * traces_right / len(train), "seconds": time.perf_counter() - tic}
    say(console, f"teacher wrote {len(train)} solutions in {result['seconds']:.1f} s: {result['kept']} with an answer, "
                  f"{result['answers_right_pct']:.2f}% right answers, {result['traces_exact_pct']:.2f}% exactly the "
                  "true work")
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def train_students(name: str, test: list, args: argparse.Namespace, out: Path, console: Console) -> dict:
    """One row of the table: the student trained on source ``name`` for every seed, scored by exact match."""
    what, fmt = CONDITIONS[name]
    source = {"trace": {"from_file": out / "teacher_traces.json"},
              "answer": {"format": "answer", "from_file": out / "teacher_answers.json"},
              "labels": {"format": "answer"}}[name]
    base = [f"out_dir={out}", *overrides(args, "student", args.student, args.student_epochs),
            *(f"data.options.{k}={v}" for k, v in source.items())]
    bundle = data_of(load_config(find_config(STUDENT_CONFIG), base))
    if problems(bundle) != test:
        raise RuntimeError(f"the {name} students' data set holds other held-out problems than the teacher's")
    runs = []
    for seed in args.seeds:
        cfg = load_config(find_config(STUDENT_CONFIG), [*base, f"seed={seed}"])
        folder = out / "students" / f"{name}-s{seed}"
        summary = train(cfg, folder, f"{name} s{seed}", console)
        student = load_model(folder / "model.pt").model.to(args.device)
        em = exact_match(student, test, format=fmt, batch_size=args.batch_size)
        runs.append({"seed": seed, "exact_match": em, "test_loss": summary["test_loss"],
                     "train_time_s": summary["train_time_s"], "run": str(folder)})
        say(console, f"student {name} seed {seed}: exact match {em:.2f}%")
    mean, std = mean_std([r["exact_match"] for r in runs])
    return {"trains_on": what, "format": fmt, "arch": cfg.student.arch, "params": summary["student_params"],
            "samples": len(bundle.train), "label_tokens": label_tokens(bundle), "epochs": cfg.train.epochs,
            "exact_match_mean": mean, "exact_match_std": std, "runs": runs,
            "train_time_s_mean": statistics.fmean(r["train_time_s"] for r in runs),
            "config": cfg.model_dump(mode="json")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    out = args.out.resolve()
    start = time.perf_counter()

    # 1. the teacher, on the true worked solutions
    teacher_cfg = load_config(find_config(TEACHER_CONFIG),
                              [f"out_dir={out}", *overrides(args, "model", args.teacher, args.teacher_epochs)])
    teacher_summary = train(teacher_cfg, out / "teacher", "teacher", console)
    teacher = load_model(out / "teacher" / "model.pt").model.to(args.device)
    truth = data_of(teacher_cfg)
    test = problems(truth)
    teacher_em = exact_match(teacher, test, format="trace", batch_size=args.batch_size)
    say(console, f"teacher {teacher_cfg.student.arch}: exact match {teacher_em:.2f}% on {len(test)} held-out problems")
    if teacher_em < TEACHER_TARGET:
        say(console, f"warning: the teacher is below {TEACHER_TARGET}% (train it longer: --teacher-epochs)")

    # 2. its outputs on the training prompts; 3-4. the students
    generated = write_teacher_sets(teacher, truth, out, args, console)
    rows = {name: train_students(name, test, args, out, console) for name in CONDITIONS}

    result = {
        "command": " ".join(["python", *sys.argv]) if argv is None else f"main({argv!r})",
        "device": args.device, "cpu": cpu_name(), "threads": args.threads, "versions": versions(),
        "data": dict(teacher_cfg.data.options), "seeds": args.seeds,
        "teacher": {"arch": teacher_cfg.student.arch, "params": teacher_summary["student_params"],
                    "samples": len(truth.train), "label_tokens": label_tokens(truth),
                    "epochs": teacher_cfg.train.epochs,
                    "exact_match": teacher_em, "test_loss": teacher_summary["test_loss"],
                    "train_time_s": teacher_summary["train_time_s"], "run": str(out / "teacher"),
                    "config": teacher_cfg.model_dump(mode="json")},
        "generated": generated,
        "students": rows,
        "total_s": time.perf_counter() - start,
    }
    print(table(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(result: dict) -> str:
    """The results as markdown: one row for the teacher, one per student source."""
    t, g = result["teacher"], result["generated"]
    lines = [f"Exact-match answers on {result['data'].get('num_test')} held-out additions "
             f"({result['data'].get('digits')} digits), greedy; students: mean ± std over "
             f"{len(result['seeds'])} seed(s).", "",
             "| model | trains on | samples | label tokens | epochs | exact match % | train s |",
             "|---|---|---:|---:|---:|---:|---:|",
             f"| teacher {t['arch']} ({t['params']:,} params) | the true traces and answers | {t['samples']} | "
             f"{t['label_tokens']:,} | {t['epochs']} | {t['exact_match']:.2f} | {t['train_time_s']:.0f} |"]
    for name, r in result["students"].items():
        lines.append(f"| student {r['arch']} ({r['params']:,} params): {name} | {r['trains_on']} | {r['samples']} | "
                     f"{r['label_tokens']:,} | {r['epochs']} | {r['exact_match_mean']:.2f} ± "
                     f"{r['exact_match_std']:.2f} | {r['train_time_s_mean']:.0f} |")
    lines += ["", f"Teacher outputs on the {g['prompts']} training prompts: {g['answers_right_pct']:.2f}% right "
              f"answers, {g['traces_exact_pct']:.2f}% exactly the true work, {g['dropped_no_answer']} without an "
              f"answer (dropped). Total {result['total_s'] / 60:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
