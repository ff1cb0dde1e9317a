"""The tables of docs/paradigms.md from a finished ``distillab bench paradigms`` folder.

Reads ``runs.csv`` (mean ± sample std over seeds, Welch's p against the labels-only student of the same
architecture; digits rows against the low-resolution student, the teacher-free and privileged rows against
MNIST-1D's) and adds one
row the suite does not train: the *independent ensemble*, the mean probability of two students trained
apart on labels (seeds k and k+1 of the ``ce`` row, k = 0..4 cyclically), the fair comparison for DML's
ensemble of two peers trained together.

    distillab bench paradigms --workers 2
    python benchmarks/paradigm_tables.py bench/paradigms > tables.md
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch

from distillab.bench.aggregate import welch_p
from distillab.config import load_config
from distillab.data import build_dataset
from distillab.models import load_model

TABLES = {
    "Mutual learning (MNIST-1D, two cnn1d_small width 10 unless said)": ("mnist1d", [
        ("ce", "labels only (independent training)"), ("independent_ensemble", "ensemble of two independent students"),
        ("dml", "DML, student (peer 1), joint updates"), ("dml:peer", "DML, peer 2"),
        ("dml:ensemble", "DML, ensemble of the two peers"), ("dml_sequential", "DML sequential, student"),
        ("dml_sequential:peer", "DML sequential, peer 2"), ("dml_sequential:ensemble", "DML sequential, ensemble"),
        ("dml_mixed", "DML with a cnn1d width-32 peer, student"), ("dml_mixed:peer", "DML, the width-32 peer (Δ against the wide one alone)", "mnist1d-wide/ce"),
        ("kd", "KD from the trained width-32 teacher"),
        ("mnist1d-wide/ce", "wide (cnn1d width 32) alone"), ("mnist1d-wide/independent_ensemble", "wide, two independent"),
        ("mnist1d-wide/dml", "wide DML, student"), ("mnist1d-wide/dml:peer", "wide DML, peer 2"),
        ("mnist1d-wide/dml:ensemble", "wide DML, ensemble")]),
    "Several teachers (MNIST-1D, teachers cnn1d width 32 / 16 / 24, seeds 0 / 1 / 2)": ("mnist1d", [
        ("ce", "labels only"), ("kd", "KD, teacher width 32 (seed 0)"), ("kd_t16", "KD, teacher width 16 (seed 1)"),
        ("kd_t24", "KD, teacher width 24 (seed 2)"), ("mtkd", "multi-teacher KD, mean of the three"),
        ("ca_mkd", "CA-MKD, confidence-weighted")]),
    "Teacher-free (MNIST-1D)": ("mnist1d", [
        ("ce", "labels only"), ("tfkd_reg", "Tf-KD virtual teacher (code defaults)"),
        ("mnist1d-self/tfkd_self", "Tf-KD self-teacher (code defaults)"), ("kd", "KD from the width-32 teacher")]),
    "Privileged information (MNIST-1D: the teacher read the clean signals)": ("mnist1d", [
        ("ce", "labels only"), ("kd", "KD, ordinary teacher (noisy signals)"),
        ("mnist1d-privileged/lupi_kd", "KD, privileged teacher (clean signals)"),
        ("mnist1d-privileged/gd", "generalized distillation, privileged teacher (λ 0.5, T 1)")]),
    "Privileged information (digits: the student reads 2x2-block low-resolution digits)": ("digits-lowres-privileged", [
        ("ce", "labels only, low resolution"), ("digits-lowres-ordinary/kd", "KD, teacher saw low resolution too"),
        ("lupi_kd", "KD, privileged teacher (full resolution)")]),
    # pipeline pairs: rows are `label:step`; a third item of a table is its labels-only row (pair/label), a
    # third item of a row its own (None: no comparison)
    "Born-again networks (MNIST-1D, cnn1d width 8, soft CE to the previous generation)": ("mnist1d-ban", [
        ("ban:gen0", "generation 0, labels only"), ("ban:gen1", "generation 1 (taught by generation 0)"),
        ("ban:gen2", "generation 2"), ("ban", "generation 3"), ("ban:bane", "BANE: ensemble of generations 1-3"),
        ("ban:gen0_to_3", "ensemble of generations 0-3")], "mnist1d-ban/ban:gen0"),
    "Teacher-assistant KD (MNIST-1D, cnn1d width 32 -> assistant -> cnn1d_small width 10)": ("mnist1d-takd", [
        ("mnist1d/ce", "labels only (the mnist1d pair's student)"), ("takd:direct", "KD straight from the teacher"),
        ("takd", "KD from the assistant (TAKD)"), ("takd:assistant", "the assistant, cnn1d width 16 (KD from the teacher)", None),
        ("takd:teacher", "the teacher", None)], "mnist1d/ce"),
    "Model compression (digits as 64 features; a small MLP, one hidden layer of 8)": ("digits-munge", [
        ("munge:labels_only", "labels only"), ("munge:kd_originals", "the ensemble's probabilities on the training set alone"),
        ("munge", "the ensemble's probabilities on training set + MUNGE pseudo-data"),
        ("munge:ensemble", "the ensemble of five MLPs (2x256)", None)], "digits-munge/munge:labels_only"),
    "Data-free KD by DeepInversion (MNIST-1D, teacher cnn1d width 32 -> cnn1d_small width 8)": ("mnist1d-deepinversion", [
        ("deepinversion:labels_only", "labels only, real data"), ("deepinversion:kd_real", "KD on the real training set"),
        ("deepinversion", "KD on 2048 synthesised signals, no real data"), ("deepinversion:teacher", "the teacher", None)],
        "mnist1d-deepinversion/deepinversion:labels_only"),
    "Data-free KD by DeepInversion (digits, cnn_digits width 32 -> width 4)": ("digits-deepinversion", [
        ("deepinversion:labels_only", "labels only, real data"), ("deepinversion:kd_real", "KD on the real training set"),
        ("deepinversion", "KD on 2048 synthesised images, no real data"), ("deepinversion:teacher", "the teacher", None)],
        "digits-deepinversion/deepinversion:labels_only"),
    "Data-free adversarial distillation (DFAD; MNIST-1D, teacher cnn1d width 32 -> cnn1d_small width 8)": ("mnist1d-dfad", [
        ("ce", "labels only, real data"), ("kd", "KD on the real training set"),
        ("dfad", "DFAD: a generator's signals, no real data (60 epochs of 50 iterations)")]),
}


def read_cells(folder: Path) -> dict[tuple[str, str], dict]:
    with open(folder / "results.csv") as fh:
        return {(r["pair"], r["method"]): r for r in csv.DictReader(fh)}


def last_values(folder: Path, pair: str, label: str) -> list[float]:
    with open(folder / "runs.csv") as fh:
        return [float(r["last_top1"]) for r in csv.DictReader(fh)
                if r["pair"] == pair and r["method"] == label and r["status"] == "done" and r["last_top1"]]


@torch.no_grad()
def independent_ensemble(folder: Path, pair: str) -> list[float]:
    """Test top-1 of the mean probability of labels-only students k and k+1 (cyclic over the seeds)."""
    runs = sorted((folder / "runs" / pair / "ce").glob("seed*"), key=lambda p: int(p.name[4:]))
    if len(runs) < 2:
        return []
    cfg = load_config(runs[0] / "config.yaml")
    data = build_dataset(cfg.data.name, **cfg.data.options)
    x, y = data.test_transform(data.test.inputs), data.test.labels
    probs = [load_model(r).model.eval()(x).softmax(1) for r in runs]
    return [100.0 * float((((probs[k] + probs[(k + 1) % len(probs)]) / 2).argmax(1) == y).float().mean())
            for k in range(len(probs))]


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    for title, (pair, rows, *table_base) in TABLES.items():
        print(f"### {title}\n\n| row | test top-1 (last epoch, mean ± std, 5 seeds) | Δ vs labels only | p (Welch) |")
        print("|---|---|---|---|")
        for label, text, *against in rows:
            where, _, name = label.rpartition("/")
            where = where or pair
            baseline = against[0] if against else (table_base[0] if table_base else f"{where}/ce")
            base_pair, _, base_label = (baseline or "").rpartition("/")
            base = last_values(args.folder, base_pair, base_label) if baseline else []  # labels only, same arch
            values = independent_ensemble(args.folder, where) if name == "independent_ensemble" \
                else last_values(args.folder, where, name)
            if f"{where}/{name}" == baseline or name == "ce" or not values or not base:
                delta, p = "-", "-"
            else:
                delta = f"{statistics.fmean(values) - statistics.fmean(base):+.2f}"
                pv = welch_p(values, base)
                p = "-" if pv is None else ("<0.001" if pv < 0.001 else f"{pv:.3f}")
            print(f"| {text} (`{label}`) | {fmt(values)} | {delta} | {p} |")
        print()


if __name__ == "__main__":
    main()
