"""The RDD blog's Figure 2 on scikit-learn digits 3, 5 and 8: RDX between a strong and a weak model.

An expert (cnn_digits, width 32, 30 epochs) and a clearly confused student (cnn_digits, width 2, two
epochs: about half of its answers right, where chance is a third) are trained on digits 3, 5, 8 with
distillab's own runner (labels only, the digits protocol of ``configs/digits/_common.yaml``), then
compared with the ``distillab rdx`` logic in both directions: RDX(student, expert), the groups the
student makes that the expert separates, and RDX(expert, student), the groups the expert makes that the
student separates. The RDX settings are those of the reference's MNIST 8/3/5 experiment
(nkondapa/RDX ``comparison_configs/mnist_835_experiment``): training split, test transforms, up to 500
images drawn with seed 0, gamma 0.05, beta 5, 3 clusters plus the extra one, 9 images per cluster,
null threshold 1.5. The digits 3/5/8 training split holds 431 images, so N = 431.

Result (2-core CPU, torch 2.13.0, seed 0; docs/figures/rdx_digits_358.json): expert 100.0 % and
student 51.9 % test top-1 (108 test images). Student-unique clusters mix classes (e.g. 60 % 8s with
39 % 3s; 55 % 3s with 45 % 5s); expert-unique clusters are pure (all 5s, all 8s, two of 3s). Every
cluster's mean affinity is above 1.5, so neither direction has a null cluster by the reference's rule.

    python benchmarks/rdx_digits_figure.py            # writes docs/figures/rdx_digits_358.{png,json}
    python benchmarks/rdx_digits_figure.py --quick --out /tmp/rdx   # a seconds-long run of the same path
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

import distillab
from distillab.config import load_config
from distillab.rdx.tool import FIGURES, format_summary, run_rdx
from distillab.runner import run

REPO = Path(__file__).resolve().parents[1]
CLASSES = [3, 5, 8]


def train(name: str, width: int, epochs: int, work: Path, args: argparse.Namespace) -> tuple[dict, Path, float]:
    """One labels-only cnn_digits run on digits 3/5/8; returns (summary, model.pt, seconds)."""
    cfg = load_config(None, [
        f"name={name}", f"out_dir={work}", f"seed={args.seed}", "method.name=ce",
        "student.arch=cnn_digits", f"student.options.width={width}",
        "data.name=digits", f"data.options.classes={CLASSES}",
        # the digits protocol (configs/digits/_common.yaml)
        "optim.name=adamw", "optim.lr=0.005", "optim.weight_decay=0.0005", "optim.schedule=cosine",
        f"train.epochs={epochs}", "train.batch_size=64", f"train.device={args.device}",
        "train.progress=false", "train.tensorboard=false", "train.checkpoint_every=1000",
    ])
    tic = time.perf_counter()
    summary, run_dir = run(cfg)
    return summary, run_dir / "model.pt", time.perf_counter() - tic


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "figures", help="where the PNG and JSON go")
    p.add_argument("--name", default="rdx_digits_358", help="file name of the PNG and JSON, without suffix")
    p.add_argument("--strong-width", type=int, default=32)
    p.add_argument("--strong-epochs", type=int, default=30)
    p.add_argument("--weak-width", type=int, default=2)
    p.add_argument("--weak-epochs", type=int, default=2)
    p.add_argument("--n", type=int, default=500, help="samples for RDX (all of the split if fewer)")
    p.add_argument("--k", type=int, default=3, help="clusters besides the null one")
    p.add_argument("--gamma", default="0.05", help="RDX gamma (0.05 in the reference's MNIST 8/3/5 config)")
    p.add_argument("--beta", type=float, default=5.0)
    p.add_argument("--split", default="train", help="train (as the reference), test or all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=None, help="folder for the two runs (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="1 epoch each, N = 60, k = 2: checks the path only")
    args = p.parse_args(argv)
    if args.quick:
        args.strong_epochs, args.weak_epochs, args.n, args.k = 1, 1, 60, 2

    with tempfile.TemporaryDirectory(prefix="rdx-digits-") as tmp:
        work = args.work or Path(tmp)
        strong, strong_pt, strong_s = train(f"cnn_digits-w{args.strong_width}-{args.strong_epochs}ep",
                                            args.strong_width, args.strong_epochs, work, args)
        weak, weak_pt, weak_s = train(f"cnn_digits-w{args.weak_width}-{args.weak_epochs}ep", args.weak_width,
                                      args.weak_epochs, work, args)
        tic = time.perf_counter()
        folder = run_rdx(strong_pt, weak_pt, split=args.split, n=args.n, k=args.k, gamma=args.gamma,
                         beta=args.beta, seed=args.seed, out=work / "rdx", device=args.device, report=print)
        rdx_s = time.perf_counter() - tic
        print(format_summary(folder))
        full = json.loads((folder / "rdx.json").read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        # a 256-colour copy: the same picture at about 40 % of the file size
        Image.open(folder / FIGURES["overview"]).convert("RGB").quantize(256).save(args.out / f"{args.name}.png",
                                                                                   optimize=True)

    result = {
        "what": "RDX between a strong and a weak cnn_digits on scikit-learn digits 3, 5, 8 (RDD blog, Figure 2)",
        "command": " ".join(["python", "benchmarks/rdx_digits_figure.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "expert": {"arch": "cnn_digits", "width": args.strong_width, "epochs": args.strong_epochs,
                   "test_top1": strong["test_top1"], "train_seconds": round(strong_s, 2)},
        "student": {"arch": "cnn_digits", "width": args.weak_width, "epochs": args.weak_epochs,
                    "test_top1": weak["test_top1"], "train_seconds": round(weak_s, 2)},
        "data": {k: full["data"][k] for k in ("name", "options", "split", "n_requested", "n", "seed", "class_names")},
        "rdx": full["rdx"],
        "clusters": {d: {"title": rec["title"], "meaning": rec["meaning"],
                         "clusters": [{key: c[key] for key in ("cluster", "null", "size", "mean_affinity", "counts",
                                                               "fractions", "representatives_data_index")}
                                      for c in rec["clusters"]]}
                     for d, rec in full["directions"].items()},
        "seconds": {"rdx_total": round(rdx_s, 2), **full["seconds"]},
        "device": f"{args.device}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "versions": {"distillab": distillab.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "figure": f"{args.name}.png",
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"expert top-1 {strong['test_top1']:.2f}%, student top-1 {weak['test_top1']:.2f}%; "
          f"wrote {args.out / (args.name + '.png')} and .json")
    return result


if __name__ == "__main__":
    main()
