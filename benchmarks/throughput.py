"""Images/s of a KD training step: distillab's engine against a minimal plain-PyTorch loop.

Both loops train the same student against the same frozen teacher on the same in-memory CIFAR-shaped
data (the ``synthetic`` data set), with the same batched crop+flip augmentation, the same objective
(0.1 CE + 0.9 KD at T = 4) and SGD, in the same process. Epochs of the two alternate, so drift in
machine load hits both; the median epoch time of each is reported.

    python benchmarks/throughput.py                      # resnet32x4 -> resnet8x4, batch 64, CPU
    python benchmarks/throughput.py --device cuda --steps 200 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import distillab
from distillab.config import load_config
from distillab.data import build_dataset
from distillab.engine.loader import epoch_generator
from distillab.engine.trainer import Trainer, resolve_device, seed_everything
from distillab.losses.response import kd_loss
from distillab.models import create_model
from distillab.objective import build_objective


def make_config(args: argparse.Namespace):
    return load_config(None, [
        f"student.arch={args.student}", f"teacher.arch={args.teacher}", "method.name=kd",
        "data.name=synthetic", f"train.batch_size={args.batch}", "train.epochs=1000", f"train.device={args.device}",
        "train.progress=false", "train.tensorboard=false", "optim.lr=0.05", "optim.schedule=constant",
        "train.drop_last=true",
    ])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_epoch(trainer: Trainer, epoch: int) -> float:
    sync(trainer.device)
    tic = time.perf_counter()
    trainer.train_epoch(epoch)
    sync(trainer.device)
    return time.perf_counter() - tic


def plain_epoch(student, teacher, data, x_all, y_all, optimizer, batch: int, seed: int, epoch: int,
                device: torch.device) -> float:
    """The loop a user would write by hand: index, augment, forward both, KD + CE, step."""
    sync(device)
    tic = time.perf_counter()
    student.train()
    order = torch.randperm(len(y_all), generator=epoch_generator(seed, epoch, 0)).to(device)
    gen = epoch_generator(seed, epoch, 1, device)
    for start in range(0, len(order) - batch + 1, batch):
        idx = order[start:start + batch]
        x = data.train_transform(x_all[idx], gen)
        y = y_all[idx]
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each loop (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = make_config(args)
    seed_everything(0)
    n = args.steps * args.batch
    data = build_dataset("synthetic", n_train=n, n_test=args.batch, num_classes=100)

    teacher = create_model(args.teacher, num_classes=100)
    student_e = create_model(args.student, num_classes=100)
    student_p = create_model(args.student, num_classes=100)
    student_p.load_state_dict(student_e.state_dict())
    trainer = Trainer(cfg, student=student_e, teacher=teacher, objective=build_objective(cfg.method), data=data,
                      run_dir=None, device=device)

    teacher_p = trainer.teacher  # the same frozen, eval-mode teacher
    student_p = student_p.to(device)
    optimizer = torch.optim.SGD(student_p.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = data.train.inputs.to(device), data.train.labels.to(device)

    engine_times, plain_times = [], []
    for rep in range(args.repeats + 1):  # repeat 0 warms both up and is not counted
        te = engine_epoch(trainer, rep + 1)
        tp = plain_epoch(student_p, teacher_p, data, x_all, y_all, optimizer, args.batch, cfg.seed, rep + 1, device)
        if rep:
            engine_times.append(te)
            plain_times.append(tp)
        print(f"repeat {rep}{' (warm-up)' if rep == 0 else ''}: engine {n / te:8.1f} img/s   plain {n / tp:8.1f} img/s",
              flush=True)

    engine_ips = n / statistics.median(engine_times)
    plain_ips = n / statistics.median(plain_times)
    result = {
        "pair": f"{args.teacher} -> {args.student}", "batch": args.batch, "steps_per_epoch": args.steps,
        "repeats": args.repeats, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "engine_images_per_s": engine_ips, "plain_images_per_s": plain_ips,
        "engine_overhead_pct": 100.0 * (plain_ips / engine_ips - 1.0),
        "versions": {"distillab": distillab.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
