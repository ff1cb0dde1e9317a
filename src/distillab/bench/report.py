"""The suite report: a Markdown file and a self-contained HTML page (figures embedded), plus the PNGs.

Per pair: the table (last epoch and best epoch apart, mean +- std over seeds, count, difference to the
labels-only baseline with Welch's p-value, the published value where the suite has one, time per run),
a bar chart with error bars, and the mean learning curve of every method. Failed runs are listed with
their error; runs not finished yet are counted.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

from distillab.bench.aggregate import BASELINE, Cell, RunRow, mean_curve


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _num(v: float | None, digits: int = 2, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    if v is None:
        return "-"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def ranked(cells: list[Cell], metric: str = "last") -> list[Cell]:
    """Baseline first, then by the metric's mean, best first (cells without results last)."""
    key = (lambda c: c.last_mean) if metric == "last" else (lambda c: c.best_mean)
    base = [c for c in cells if c.method == BASELINE]
    rest = sorted((c for c in cells if c.method != BASELINE), key=lambda c: -(key(c) if key(c) is not None else -1e9))
    return base + rest


# each column's header in the lines a console shows it on (its width is then the longest line, not the whole
# header); the Markdown and HTML tables join the lines
TABLE_HEAD_LINES = [("method",), ("last epoch", "(mean ± std)"), ("best epoch", "(mean ± std)"), ("runs",),
                    ("Δ vs", "labels-only"), ("p", "(Welch)"), ("published",), ("train", "s/run")]
TABLE_HEAD = [" ".join(lines) for lines in TABLE_HEAD_LINES]


def _selection(runs) -> str:
    """Which split chose the runs' best epoch: the test set (an optimistic number), or a validation part."""
    done = [r for r in runs if r.status == "done" and getattr(r, "selected_by", "")]
    on_val = sum(r.selected_by == "validation" for r in done)
    if done and on_val == len(done):
        return "chosen on a validation part held out of the training set (`data.val_fraction`), never on test"
    if on_val:
        return f"chosen on validation in {on_val} of {len(done)} runs, on the test set in the rest"
    return ("chosen on the test set, as the reference codebases do (an optimistic number; `data.val_fraction` "
            "chooses it on validation)")


def table_rows(cells: list[Cell], metric: str) -> list[list[str]]:
    rows = []
    for c in ranked(cells, metric):
        runs = f"{c.n}" + (f" ({c.n_failed} failed)" if c.n_failed else "") + \
            (f" ({c.n_missing} pending)" if c.n_missing else "")
        rows.append([c.method, _fmt(c.last_mean, c.last_std), _fmt(c.best_mean, c.best_std), runs,
                     _num(c.delta_vs_baseline, signed=True), _p(c.p_vs_baseline), _num(c.published),
                     _num(c.time_mean_s, 1)])
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars_figure(cells: list[Cell], title: str, teacher: float | None, metric: str = "last"):
    """Horizontal bars (mean, printed on the bar) with error bars (std) on an accuracy axis from 0; published
    values as diamonds; teacher and labels-only lines. Returns the figure."""
    plt = _pyplot()
    order = [c for c in reversed(ranked(cells, metric)) if (c.last_mean if metric == "last" else c.best_mean) is not None]
    means = [c.last_mean if metric == "last" else c.best_mean for c in order]
    stds = [(c.last_std if metric == "last" else c.best_std) or 0.0 for c in order]
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(order) + 1.4))
    colors = ["#888888" if c.method == BASELINE else "#3b75af" for c in order]
    ax.barh(range(len(order)), means, xerr=stds, color=colors, ecolor="black", capsize=2, height=0.7)
    pub = [(i, c.published) for i, c in enumerate(order) if c.published is not None]
    if pub:
        ax.scatter([v for _, v in pub], [i for i, _ in pub], marker="D", color="#d62728", zorder=3, s=18,
                   label="published")
    base = next((c for c in order if c.method == BASELINE), None)
    if base is not None:
        ax.axvline(base.last_mean if metric == "last" else base.best_mean, color="#888888", ls="--", lw=1,
                   label="labels only")
    if teacher is not None:
        ax.axvline(teacher, color="black", ls=":", lw=1, label=f"teacher {teacher:.1f}")
    hi = max([m + s for m, s in zip(means, stds)] + [v for _, v in pub] + ([teacher] if teacher else []) or [100])
    right = max(hi, min(100.0, 1.05 * hi + 0.5))
    ax.set_xlim(0.0, right)  # from 0: bar lengths compare as the accuracies do
    for i, (m, s) in enumerate(zip(means, stds)):  # on a 0-based axis close values are read from the numbers
        inside = m > 0.12 * right
        ax.text(0.01 * right if inside else m + s + 0.01 * right, i, f"{m:.1f}", va="center", ha="left",
                color="white" if inside else "black", fontsize=7)
    ax.set_yticks(range(len(order)), [c.method for c in order], fontsize=8)
    ax.set_xlabel(f"test top-1 (%), {metric} epoch, mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def curves_figure(cells: list[Cell], folders: dict[str, list[str]], title: str,
                  columns: dict[str, str] | None = None):
    """Small multiples: each method's mean test curve (band: std over seeds) against the baseline's, epochs as
    whole numbers; ``columns``: the metrics column of a row whose curve is not ``test/top1`` (another model of a
    run). Returns the figure."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    methods = [c.method for c in cells if c.n > 0 and c.method in folders]  # rows with a curve
    base = mean_curve(folders.get(BASELINE, [])) if BASELINE in folders else None
    cols = 5
    nrows = max(1, -(-len(methods) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.0 * nrows), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, method in zip(axes.flat, methods):
        epochs, mean, std = mean_curve(folders.get(method, []), (columns or {}).get(method, "test/top1"))
        if base is not None and base[0] and method != BASELINE:
            ax.plot(base[0], base[1], color="#888888", lw=1, ls="--")
        if epochs:
            ax.plot(epochs, mean, color="#3b75af", lw=1.2)
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color="#3b75af", alpha=0.25, lw=0)
        ax.set_title(method, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on a short run's axis
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test top-1 (%)", fontsize=8)
    fig.suptitle(f"{title}  (dashed: labels only; band: ± std over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def plot_bars(cells: list[Cell], path: Path, title: str, teacher: float | None, metric: str = "last") -> Path:
    """The bar chart (:func:`bars_figure`) as a PNG."""
    return _save(bars_figure(cells, title, teacher, metric), path, dpi=110)


def plot_curves(cells: list[Cell], folders: dict[str, list[str]], path: Path, title: str,
                columns: dict[str, str] | None = None) -> Path:
    """The learning curves (:func:`curves_figure`) as a PNG."""
    return _save(curves_figure(cells, folders, title, columns), path, dpi=100)


def _pair_line(spec, teacher: float | None) -> str:
    """What a pair compares: its teacher and student, and its pipelines."""
    parts = []
    if spec.student is not None:
        ref_teacher = spec.reference.get("teacher")
        parts.append(((f"Teacher `{spec.teacher}`: {_num(teacher)}%" + (f" (published {ref_teacher:.2f})"
                       if ref_teacher else "")) if spec.teacher else "No teacher (labels only)")
                     + f"; student `{spec.student['arch']}` {spec.student['options'] or ''}".rstrip())
    if spec.pipelines:
        parts.append("Pipelines: " + ", ".join(f"{label} `{file}`" for label, file in spec.pipelines.items())
                     + " (rows `label:step`: the pipeline's other steps; `label:ensemble`: its ensembles)")
    return ". ".join(parts)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    """One line of the Markdown report as HTML: escaped, its `code` spans as <code> elements."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick is text, not the start of a span
        return html.escape(text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def environment() -> dict:
    import os

    import torch

    from distillab.runner import cpu_name, versions

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**versions(), "cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu or "none"}


def write_report(out: Path, suite, cells: list[Cell], runs: list[RunRow], teachers: dict[str, float | None],
                 *, command: str, wall_s: float | None = None) -> dict[str, Path]:
    """report.md, report.html and the figures under ``out/report``; returns their paths."""
    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    metric = suite.spec.metric
    env = environment()
    pairs = list(dict.fromkeys(c.pair for c in cells))
    failed = [r for r in runs if r.status == "failed"]
    pending = [r for r in runs if r.status in ("missing", "partial")]
    figures: dict[str, Path] = {}
    md = [f"# Benchmark suite `{suite.name}`", ""]
    if suite.spec.description:
        md += [suite.spec.description.strip(), ""]
    if suite.spec.hardware_note:
        md += [suite.spec.hardware_note.strip(), ""]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md += [f"- command: `{command}`",
           f"- made: {stamp}" + (f"; wall time of the invocation that wrote it {wall_s / 60:.1f} min" if wall_s else ""),
           f"- hardware: {env['cpu']} ({env['cores']} cores), GPU: {env['gpu']}",
           f"- versions: distillab {env['distillab']}, torch {env['torch']}, Python {env['python']}",
           f"- reported: test top-1 (%) at the last epoch and at the best epoch, mean ± sample std over seeds "
           f"{sorted({r.seed for r in runs})}; Δ and Welch's p compare the last epoch with the labels-only student (`ce`)",
           f"- best epoch: {_selection(runs)}",
           ""]
    html_parts = [f"<h1>Benchmark suite <code>{html.escape(suite.name)}</code></h1>",
                  f"<p>{_inline_html(suite.spec.description.strip())}</p>" if suite.spec.description else "",
                  f"<p>{_inline_html(suite.spec.hardware_note.strip())}</p>" if suite.spec.hardware_note else "",
                  "<ul>" + "".join(f"<li>{_inline_html(line[2:])}</li>" for line in md[-7:-1]) + "</ul>"]
    for pair in pairs:
        pcells = [c for c in cells if c.pair == pair]
        spec = suite.pair(pair)
        teacher = teachers.get(pair)
        folders: dict[str, list[str]] = {}
        columns: dict[str, str] = {}
        for r in runs:
            if r.pair == pair and r.status == "done" and r.column:  # an ensemble of a pipeline's steps: no curve
                folders.setdefault(r.method, []).append(r.folder)
                columns[r.method] = r.column
        title = f"{pair} (teacher {_num(teacher)}%)" if spec.teacher else pair
        bars = plot_bars(pcells, folder / f"bars_{pair}.png", title, teacher, metric)
        curves = plot_curves(pcells, folders, folder / f"curves_{pair}.png", pair, columns)
        figures[f"bars_{pair}"], figures[f"curves_{pair}"] = bars, curves
        head_line = _pair_line(spec, teacher)
        rows = table_rows(pcells, metric)
        md += [f"## {pair}", "", head_line + ("  " + spec.note if spec.note else ""), "", _md_table(TABLE_HEAD, rows),
               "", f"![bar chart]({bars.name})", "", f"![learning curves]({curves.name})", ""]
        html_parts += [f"<h2>{html.escape(pair)}</h2>", f"<p>{_inline_html(head_line)} {_inline_html(spec.note)}</p>",
                       _html_table(TABLE_HEAD, rows), _img(bars), _img(curves)]
    md += ["## Failed runs", ""]
    if failed:
        fail_rows = [[r.pair, r.method, str(r.seed), r.error[:300], r.folder] for r in failed]
        md += [_md_table(["pair", "method", "seed", "error", "folder"], fail_rows), ""]
        html_parts += ["<h2>Failed runs</h2>", _html_table(["pair", "method", "seed", "error", "folder"], fail_rows)]
    else:
        md += ["None.", ""]
        html_parts += ["<h2>Failed runs</h2><p>None.</p>"]
    if pending:
        line = f"{len(pending)} run(s) not finished yet: run the same command again to resume them."
        md += ["## Not finished", "", line, ""]
        html_parts += ["<h2>Not finished</h2>", f"<p>{html.escape(line)}</p>"]
    md_path = folder / "report.md"
    md_path.write_text("\n".join(md))
    html_path = folder / "report.html"
    html_path.write_text(_HTML.format(title=html.escape(f"distillab bench {suite.name}"), body="\n".join(html_parts)))
    return {"md": md_path, "html": html_path, **figures}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>'


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }} td:first-child {{ text-align: left; font-weight: 600; }}
img {{ max-width: 100%; }} code {{ background: #f4f4f4; padding: 0 3px; }}
</style></head><body>
{body}
</body></html>
"""
