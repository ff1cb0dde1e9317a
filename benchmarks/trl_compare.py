"""Token-level distillation on CPU: distillab against TRL's GKDTrainer, same models, data, loss and optimiser.

Both distil the same student from the same teacher, both ``transformers`` GPT-2 models (byte vocabulary, no
dropout; student 0.27 M parameters, teacher 1.25 M); the teacher is first trained briefly with distillab (labels
only, one epoch of the same text, so that its distribution is worth distilling), the student starts from the
same random weights in both. Each trainer runs in a fresh subprocess (separate peak memory); the trainers take
turns (the first of each repeat rotates), ``--repeats`` times for each loss. A third trainer, ``plain``, is a
bare PyTorch loop doing the same work (the same batches, models, loss function and optimiser), timed phase by
phase: the floor that no framework can beat without doing less work. A fourth, ``distillab_cached``, is distillab
with ``train.teacher_cache=true``: over several epochs (``--epochs``) it runs the teacher on each block once and
reads its stored fp32 logits afterwards, where TRL and the plain loop run the teacher at every step.

* ``jsd``: GKD's generalised JSD at beta 0.5; ``fkl``: beta 0, forward KL(teacher || student). TRL:
  ``GKDTrainer`` with lmbda 0 (every step off-policy, on the data's sequences), seq_kd False; its loss
  ``generalized_jsd_loss`` at temperature 1 (``compute_loss`` passes none; ``GKDConfig.temperature`` is the
  sampling temperature, unused at lmbda 0). distillab: student ``hf_causal_lm`` (the same initial folder),
  teacher ``hf_causal_lm`` (the same folder), method ``lm_jsd`` with ``token_jsd`` beta 0.5 or 0 (TRL's
  definition, endpoints included), no CE.
* Data: distillab's ``stdlib`` blocks (bytes, ``--block`` tokens), ``--epochs`` epochs in distillab's shuffled
  order (seed 0, reshuffled each epoch), the last partial batch dropped; TRL reads them in that order (a
  sequential sampler over every epoch's batches laid out one after the other, one TRL epoch). distillab's
  block is inputs ``ids[i:i+L]`` with labels ``ids[i+1:i+L+1]``; TRL shifts inside ``compute_loss`` (logits
  ``[:, :-1]`` against labels ``[:, 1:]``), so it gets the whole chunk ``ids[i:i+L+1]`` as input_ids (padding
  0) and labels ``[-100] + distillab's labels``. Both then score the same L positions from the same prefixes
  (causal models), with the same padding mask; TRL runs one extra position per block (1/L more work) whose
  logits it discards.
* Loss normalisation: TRL divides the summed divergence by ``num_items_in_batch``, the real labels of
  ``labels[..., 1:]`` (the HF Trainer's count for causal LMs), which is distillab's real-token count. So the
  per-step losses are the same number, up to floating-point order.
* Optimiser: torch AdamW (TRL ``optim=adamw_torch``, not its default fused one), lr ``--lr`` constant, no
  warm-up, no weight decay, betas (0.9, 0.999), eps 1e-8; no gradient clipping (TRL ``max_grad_norm=0``);
  fp32 (TRL ``bf16=False``: its default is True), no gradient checkpointing (TRL's default is True), no
  evaluation or checkpoints during training, TRL logging once at the end.
* Threads: 1 per trainer by default. The machine this was written on has 2 cores shared with other work;
  with 2 threads each, one descheduled thread stalls the other at every kernel and the same run varied 5x.
* Measured: training tokens (real, scored) per wall second of the training loop (distillab: its epoch time,
  which excludes the evaluations before and after; TRL: ``on_train_begin`` to ``on_train_end``; plain: the
  loop), and per second of the median step (steadier on a shared machine, and without compilation under
  ``--compile``); the median time of each step's phases; the process's peak resident memory (``VmHWM``,
  imports and models included); every step's loss.

    python benchmarks/trl_compare.py                         # -> docs/results/trl_compare_cpu.json
    python benchmarks/trl_compare.py --repeats 1 --max-bytes 40000 --json /tmp/t.json   # a quick look
    python benchmarks/trl_compare.py --compile --losses jsd --json /tmp/compiled.json  # torch.compile in all
    python benchmarks/trl_compare.py --epochs 3 --max-bytes 84000 --trainers distillab,distillab_cached,trl,plain \
        --json docs/results/trl_compare_cpu_3epochs.json   # the same tokens as three passes over a third

Needs ``pip install 'distillab[bench-trl]'`` (trl, transformers, datasets); written against trl 1.16.0 and
transformers 5.24.0. Not imported by the package or the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

STUDENT = {"model_type": "gpt2", "n_embd": 96, "n_layer": 2, "n_head": 2}  # ~0.27 M parameters at 256 tokens
TEACHER = {"model_type": "gpt2", "n_embd": 128, "n_layer": 6, "n_head": 4}  # ~1.25 M parameters
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # GPT-2's config defaults to 0.1
LOSSES = {"jsd": 0.5, "fkl": 0.0}  # GKD beta (TRL's): 0.5 JSD, 0 forward KL


def model_config(arch: dict, block: int) -> dict:
    # TRL reads block + 1 tokens (it shifts inside its loss)
    return {**arch, **NO_DROPOUT, "n_positions": block + 1}


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), MB."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def data_overrides(args) -> list[str]:
    return [f"data.options.block={args.block}", f"data.options.max_bytes={args.max_bytes}",
            "data.options.tokenizer=bytes"]


def train_overrides(args, lr: float, epochs: int = 1) -> list[str]:
    return [f"train.batch_size={args.batch}", "train.drop_last=true", "train.progress=false",
            "train.tensorboard=false", "train.device=cpu", f"train.threads={args.threads}", f"train.epochs={epochs}",
            f"train.eval_every={epochs}",
            "optim.name=adamw", f"optim.lr={lr}", "optim.weight_decay=0.0", "optim.betas=[0.9, 0.999]",
            "optim.schedule=constant", "optim.warmup_epochs=0", "seed=0"]


def flow(mapping: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


# ------------------------------------------------------------------------------------------------ setup


def prepare(args, work: Path) -> dict:
    """The teacher (trained briefly by distillab, labels only) and the student's initial weights, as local
    folders; a teacher model file for distillab's ``teacher.checkpoint``. Reused when already there."""
    from distillab.config import load_config
    from distillab.models import create_model, load_model
    from distillab.runner import find_config, run

    teacher_dir, student_dir, teacher_file = work / "teacher", work / "student_init", work / "teacher.pt"
    if not teacher_file.is_file():
        cfg = load_config(find_config("configs/lm/student_baseline.yaml"), [
            f"out_dir={work / 'runs'}", "name=teacher", "student.arch=hf_causal_lm",
            f"student.options={{config: {flow(model_config(TEACHER, args.block))}}}", *data_overrides(args),
            *train_overrides(args, args.teacher_lr)])
        summary, folder = run(cfg)
        loaded = load_model(folder / "model.pt")
        loaded.model.model.save_pretrained(teacher_dir)
        torch.save({"model": loaded.model.state_dict(), "arch": "hf_causal_lm", "options": {"path": str(teacher_dir)},
                    "num_classes": loaded.num_classes, "tokenizer": loaded.tokenizer,
                    "test_loss": summary["test_loss"]}, teacher_file)
    if not student_dir.is_dir():
        torch.manual_seed(0)
        create_model("hf_causal_lm", 256, config=model_config(STUDENT, args.block)).model.save_pretrained(student_dir)
    record = torch.load(teacher_file, weights_only=False)
    return {"teacher": str(teacher_dir), "teacher_file": str(teacher_file), "student": str(student_dir),
            "teacher_test_loss": record.get("test_loss")}


# ------------------------------------------------------------------------------------------------ workers


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values) if values else float("nan")


def distillab_worker(args, paths: dict, beta: float, cached: bool = False) -> dict:
    """One distillab run (``cached``: with ``train.teacher_cache``, fp32). A training step registered here (the
    engine's own ``joint`` step, timed, keeping the loss tensor) records each step's loss and how long the step
    took; the rest of each iteration (the frozen teacher's forward or cache read, batch preparation, metric sums)
    is the time between steps."""
    from distillab.config import load_config
    from distillab.core.steps import STEPS, joint
    from distillab.engine.logger import read_metrics
    from distillab.runner import find_config, run

    losses: list[torch.Tensor] = []
    spans: list[tuple[float, float]] = []

    @STEPS.register("bench_recorded", description="joint, timed, keeping each step's loss (benchmarks/trl_compare.py)")
    def recorded(runner):
        _ = runner.frozen  # the teacher (or its cache) outside the timed span, as before the engine's own step
        tic = time.perf_counter()
        total, logs, logits = joint(runner)
        spans.append((tic, time.perf_counter()))
        losses.append(total.detach())
        return total, logs, logits

    torch.set_num_threads(args.threads)
    name = f"distillab-b{beta}-{os.getpid()}"
    cfg = load_config(find_config("configs/lm/jsd_gpt.yaml"), [
        f"out_dir={Path(args.work) / 'runs'}", f"name={name}", "student.arch=hf_causal_lm",
        f"student.options={{path: {paths['student']}}}", "teacher.config=null",
        f"teacher.checkpoint={paths['teacher_file']}", "method.name=lm_jsd",
        f"method.params={{token_jsd: {{beta: {beta}}}}}",
        "method.step=bench_recorded", f"train.compile={str(args.compile).lower()}",
        f"train.teacher_cache={str(cached).lower()}", "train.teacher_cache_dtype=float32", *data_overrides(args),
        *train_overrides(args, args.lr, args.epochs)])
    summary, folder = run(cfg)
    rows = read_metrics(folder / "metrics.csv")
    seconds = sum(r["time/epoch_s"] for r in rows)  # training time of every epoch (evaluations excluded)
    tokens = round(sum(r["throughput/tokens_per_s"] * r["time/epoch_s"] for r in rows))
    periods = [b[0] - a[0] for a, b in zip(spans, spans[1:])]
    inside = [end - begin for begin, end in spans[1:]]
    phases = {"step_ms": median_ms(periods),
              "student_forward_loss_backward_adamw_ms": median_ms(inside),
              "teacher_forward_and_engine_ms": median_ms([p - i for p, i in zip(periods, inside)])}
    return {"tokens_per_s": tokens / seconds, "train_s": seconds, "tokens": tokens, "steps": len(losses),
            "losses": [float(v) for v in losses], "peak_rss_mb": peak_rss_mb(), "test_loss": summary["test_loss"],
            "phases": phases}


def trl_batches(args) -> tuple[torch.Tensor, torch.Tensor]:
    """distillab's training batches of epochs 1 .. ``--epochs`` (its loader, seed 0, drop_last), as TRL's input_ids
    and labels: the whole chunk ``ids[i:i+L+1]`` (padding 0) and ``[-100] + labels``, (steps * batch, L + 1)
    each, every epoch's batches after the previous epoch's."""
    from distillab.data import build_dataset
    from distillab.data.base import IGNORE_INDEX
    from distillab.engine.loader import BatchLoader

    data = build_dataset("stdlib", block=args.block, tokenizer="bytes", max_bytes=args.max_bytes)
    loader = BatchLoader(data.train, args.batch, device=torch.device("cpu"), shuffle=True, seed=0, drop_last=True)
    ids, labels = [], []
    for batch in (b for epoch in range(1, args.epochs + 1) for b in _epoch(loader, epoch)):
        x, y = batch["input"], batch["label"]
        chunk = torch.cat([x[:, :1], y.clamp_min(0)], dim=1)  # the first input, then the labels (padding: 0)
        real = y != IGNORE_INDEX  # the real inputs too: a block's inputs and labels are real at the same positions
        assert torch.equal(chunk[:, :-1][real], x[real]), "TRL's input_ids must hold distillab's inputs"
        ids.append(chunk)
        labels.append(torch.cat([torch.full_like(y[:, :1], IGNORE_INDEX), y], dim=1))
    return torch.cat(ids), torch.cat(labels)


def _epoch(loader, epoch: int):
    loader.set_epoch(epoch)  # the engine's epochs count from 1
    yield from loader


def byte_tokenizer():
    """A 256-id tokenizer object for TRL, which wants a processing class (pad id 0); it never tokenises here."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(256)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<0>")),
                                   pad_token="<0>", unk_token="<0>")


def trl_worker(args, paths: dict, beta: float) -> dict:
    """One TRL run; ``compute_loss`` (student and teacher forwards, the loss) timed and its loss kept, the step
    timed by callbacks (the rest: backward, AdamW, the data loader, the Trainer's bookkeeping)."""
    import transformers
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, TrainerCallback, default_data_collator
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    ids, labels = trl_batches(args)
    steps = len(ids) // args.batch
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                                 "labels": labels.tolist()})
    losses: list[torch.Tensor] = []
    inside: list[float] = []
    starts: list[float] = []
    clock: dict[str, float] = {}

    class Recorded(GKDTrainer):
        def _get_train_sampler(self, *unused, **ignored):
            return SequentialSampler(self.train_dataset)  # distillab's order, as laid out in the dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tic = time.perf_counter()
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inside.append(time.perf_counter() - tic)
            losses.append((out[0] if return_outputs else out).detach())
            return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *unused, **ignored):
            clock["rss_start_mb"] = rss_mb()
            clock["begin"] = time.perf_counter()

        def on_step_begin(self, *unused, **ignored):
            starts.append(time.perf_counter())

        def on_train_end(self, *unused, **ignored):
            clock["end"] = time.perf_counter()

    config = GKDConfig(
        output_dir=str(Path(args.work) / f"trl-{os.getpid()}"), lmbda=0.0, beta=beta, seq_kd=False, temperature=1.0,
        max_steps=steps, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=0.0, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=True, dataloader_drop_last=True, dataloader_num_workers=0,
        logging_steps=steps, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        max_length=args.block + 1, torch_compile=args.compile)
    student = AutoModelForCausalLM.from_pretrained(paths["student"], local_files_only=True)
    teacher = AutoModelForCausalLM.from_pretrained(paths["teacher"], local_files_only=True)
    trainer = Recorded(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                       data_collator=default_data_collator, processing_class=byte_tokenizer(), callbacks=[Clock()])
    trainer.train()
    seconds = clock["end"] - clock["begin"]
    tokens = int((labels[: steps * args.batch, 1:] != -100).sum())
    periods = [b - a for a, b in zip(starts, starts[1:])]
    phases = {"step_ms": median_ms(periods), "student_teacher_forward_loss_ms": median_ms(inside[1:]),
              "backward_adamw_and_trainer_ms": median_ms([p - i for p, i in zip(periods, inside)])}
    return {"tokens_per_s": tokens / seconds, "train_s": seconds, "tokens": tokens, "steps": len(losses),
            "losses": [float(v) for v in losses], "peak_rss_mb": peak_rss_mb(), "rss_start_mb": clock["rss_start_mb"],
            "phases": phases}


def plain_worker(args, paths: dict, beta: float) -> dict:
    """The floor: a bare PyTorch loop doing the same work (distillab's batches, the HF models from the same
    folders, the teacher under no_grad, distillab's token_jsd_loss, torch AdamW), each phase timed."""
    from transformers import AutoModelForCausalLM

    from distillab.data import build_dataset
    from distillab.engine.loader import BatchLoader
    from distillab.losses.lm import token_jsd_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = build_dataset("stdlib", block=args.block, tokenizer="bytes", max_bytes=args.max_bytes)
    loader = BatchLoader(data.train, args.batch, device=torch.device("cpu"), shuffle=True, seed=0, drop_last=True)
    student = AutoModelForCausalLM.from_pretrained(paths["student"], local_files_only=True).train()
    teacher = AutoModelForCausalLM.from_pretrained(paths["teacher"], local_files_only=True).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    if args.compile:  # in place, as distillab's train.compile
        student.compile()
        teacher.compile()
    names = ("data", "teacher_forward", "student_forward", "loss", "backward", "adamw")
    times: dict[str, list[float]] = {n: [] for n in names}
    losses, tokens = [], 0
    begin = tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        times[name].append(now - tick)
        tick = now

    for batch in (b for epoch in range(1, args.epochs + 1) for b in _epoch(loader, epoch)):
        x, y = batch["input"], batch["label"]
        lap("data")
        with torch.no_grad():
            t_logits = teacher(input_ids=x, use_cache=False).logits
        lap("teacher_forward")
        s_logits = student(input_ids=x, use_cache=False).logits
        lap("student_forward")
        loss = token_jsd_loss(s_logits, t_logits, y, beta)
        lap("loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward")
        optimizer.step()
        lap("adamw")
        losses.append(loss.detach())
        tokens += int((y != -100).sum())
    seconds = time.perf_counter() - begin
    phases = {f"{n}_ms": median_ms(v[1:]) for n, v in times.items()}
    phases["step_ms"] = median_ms([sum(parts) for parts in zip(*(v[1:] for v in times.values()))])
    return {"tokens_per_s": tokens / seconds, "train_s": seconds, "tokens": tokens, "steps": len(losses),
            "losses": [float(v) for v in losses], "peak_rss_mb": peak_rss_mb(), "phases": phases}


WORKERS = {"distillab": distillab_worker, "trl": trl_worker, "plain": plain_worker,
           "distillab_cached": lambda args, paths, beta: distillab_worker(args, paths, beta, cached=True)}


# ------------------------------------------------------------------------------------------------ driver


def run_worker(args, framework: str, loss: str, paths: dict) -> dict:
    out = Path(args.work) / f"result-{framework}-{loss}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--worker", framework, "--loss", loss, "--result", str(out),
           "--paths", json.dumps(paths), *forwarded(args)]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=not args.verbose, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{framework} worker failed ({done.returncode}):\n{(done.stderr or '')[-4000:]}")
    return json.loads(out.read_text())


def forwarded(args) -> list[str]:
    return ["--work", str(args.work), "--block", str(args.block), "--batch", str(args.batch),
            "--max-bytes", str(args.max_bytes), "--lr", str(args.lr), "--threads", str(args.threads),
            "--epochs", str(args.epochs),
            *(["--compile"] if args.compile else [])]


def summarise(runs: list[dict]) -> dict:
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "runs": values}

    # tokens per second of the median step: what a run does when the shared machine leaves it alone
    per_step = [r["tokens"] / r["steps"] / (r["phases"]["step_ms"] / 1000) for r in runs]
    phases = {k: statistics.median(r["phases"][k] for r in runs) for k in runs[0]["phases"]}
    return {"tokens_per_s": stats([r["tokens_per_s"] for r in runs]), "median_step_tokens_per_s": stats(per_step),
            "peak_rss_mb": stats([r["peak_rss_mb"] for r in runs]), "train_s": stats([r["train_s"] for r in runs]),
            "tokens": runs[0]["tokens"], "steps": runs[0]["steps"], "phases_ms": phases}


def agreement(a: list[float], b: list[float]) -> dict:
    diffs = [abs(x - y) for x, y in zip(a, b)]
    return {"step0_abs_diff": diffs[0], "step0_rel_diff": diffs[0] / abs(a[0]), "max_abs_diff": max(diffs),
            "max_rel_diff": max(d / abs(x) for d, x in zip(diffs, a)), "last": [a[-1], b[-1]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each trainer per loss")
    p.add_argument("--losses", default="jsd,fkl", help="comma-separated: jsd (beta 0.5), fkl (beta 0)")
    p.add_argument("--trainers", default="distillab,trl,plain", help="comma-separated: distillab, trl, plain (a "
                   "bare PyTorch loop doing the same work: the floor), distillab_cached (train.teacher_cache: the "
                   "teacher once per block)")
    p.add_argument("--block", type=int, default=128, help="tokens per block (sequence length)")
    p.add_argument("--batch", type=int, default=16, help="blocks per step")
    p.add_argument("--max-bytes", type=int, default=250_000, help="stdlib training text (about 120 steps)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the blocks (distillab reshuffles each; TRL "
                   "and the plain loop read the same batches in the same order)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the distillation")
    p.add_argument("--teacher-lr", type=float, default=2e-3, help="AdamW learning rate of the teacher's epoch")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each trainer (1: steadiest on a shared "
                   "machine, see the module docstring)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (distillab train.compile, TRL "
                   "torch_compile, plain: both models); compilation counts in tokens/s (wall), not in the median step")
    p.add_argument("--work", type=Path, default=Path("runs/trl_compare"), help="models, run folders, results")
    p.add_argument("--json", type=Path, default=Path("docs/results/trl_compare_cpu.json"))
    p.add_argument("--verbose", action="store_true", help="show the workers' output")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--loss", choices=tuple(LOSSES), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        paths = json.loads(args.paths)
        args.result.write_text(json.dumps(WORKERS[args.worker](args, paths, LOSSES[args.loss])))
        return

    trainers = args.trainers.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    paths = prepare(args, args.work)
    print(f"teacher ready ({time.perf_counter() - tic:.0f} s; test loss {paths['teacher_test_loss']:.3f} nats/byte)")
    results = {}
    for loss in args.losses.split(","):
        runs: dict[str, list[dict]] = {t: [] for t in trainers}
        for r in range(args.repeats):
            order = trainers[r % len(trainers):] + trainers[:r % len(trainers)]  # rotate who goes first
            for trainer in order:
                res = run_worker(args, trainer, loss, paths)
                runs[trainer].append(res)
                print(f"{loss} repeat {r + 1} {trainer:9s}: {res['tokens_per_s']:8.0f} tok/s  "
                      f"peak {res['peak_rss_mb']:6.0f} MB  {res['steps']} steps  loss {res['losses'][0]:.5f} -> "
                      f"{res['losses'][-1]:.5f}", flush=True)
        summary = {t: summarise(v) for t, v in runs.items()}
        results[loss] = {"beta": LOSSES[loss], **summary,
                         "losses": {t: v[0]["losses"] for t, v in runs.items()}}
        for ours, suffix in (("distillab", ""), ("distillab_cached", "_cached")):
            if ours not in runs or "trl" not in runs:
                continue
            d, t = summary[ours], summary["trl"]
            results[loss]["speedup" + suffix] = d["tokens_per_s"]["mean"] / t["tokens_per_s"]["mean"]
            results[loss]["median_step_speedup" + suffix] = (d["median_step_tokens_per_s"]["mean"]
                                                             / t["median_step_tokens_per_s"]["mean"])
            results[loss]["loss_agreement" + suffix] = agreement(runs[ours][0]["losses"], runs["trl"][0]["losses"])
        if "trl" in runs:
            results[loss]["trl_rss_at_train_start_mb"] = [x["rss_start_mb"] for x in runs["trl"]]
    print_table(results, trainers)
    write(args, paths, results)


def print_table(results: dict, trainers: list[str]) -> None:
    print(f"\n{'loss':5s} {'trainer':16s} {'tokens/s (wall)':>17s} {'median step':>12s} {'peak MB':>12s} "
          f"{'steps':>6s}")
    for loss, r in results.items():
        for name in trainers:
            s = r[name]
            print(f"{loss:5s} {name:16s} {s['tokens_per_s']['mean']:9.0f} ± {s['tokens_per_s']['std']:5.0f} "
                  f"{s['median_step_tokens_per_s']['mean']:12.0f} {s['peak_rss_mb']['mean']:7.0f} ± "
                  f"{s['peak_rss_mb']['std']:3.0f} {s['steps']:6d}")
        for ours, suffix in (("distillab", ""), ("distillab_cached", "_cached")):
            if "speedup" + suffix not in r:
                continue
            a = r["loss_agreement" + suffix]
            print(f"      {ours} / trl: {r['speedup' + suffix]:.2f}x (wall), {r['median_step_speedup' + suffix]:.2f}x "
                  f"(median step); loss step 0 |diff| {a['step0_abs_diff']:.1e}, max over steps "
                  f"{a['max_abs_diff']:.1e} (rel {a['max_rel_diff']:.1e}); last {a['last'][0]:.5f} vs "
                  f"{a['last'][1]:.5f}")
        for name in trainers:
            print(f"      {name} phases (median ms): " + ", ".join(f"{k.removesuffix('_ms')} {v:.1f}"
                                                             for k, v in r[name]["phases_ms"].items()))


def write(args, paths: dict, results: dict) -> None:
    import transformers
    import trl

    from distillab.runner import cpu_name, versions

    record = {
        "claim": "distillab >= 1.5x TRL GKDTrainer tokens/s on CPU at equal loss (project target)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": "cpu", "cpu_name": cpu_name(), "threads": args.threads, "cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "versions": {**versions(), "transformers": transformers.__version__, "trl": trl.__version__},
        "setup": {"student": model_config(STUDENT, args.block), "teacher": model_config(TEACHER, args.block),
                  "teacher_training": "distillab, labels only (method ce), 1 epoch of the same blocks, AdamW "
                                      f"lr {args.teacher_lr} constant", "teacher_test_loss": paths["teacher_test_loss"],
                  "block": args.block, "batch": args.batch, "max_bytes": args.max_bytes, "epochs": args.epochs,
                  "lr": args.lr,
                  "optimizer": "torch AdamW, betas (0.9, 0.999), eps 1e-8, no weight decay, constant lr, no clipping",
                  "repeats": args.repeats, "seed": 0,
                  "order": "the trainers take turns, the first of each repeat rotating; one subprocess per run"},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
