"""The report of a tuning study (:mod:`distillab.tune`): ``report.md`` and its figures in the tune folder.

* ``history.png``: each trial's validation score in the order they ran (pruned ones at their last report),
  and the best so far;
* ``importance.png``: how much of the score's variation each key explains (Optuna's fANOVA importances);
* ``slice.png``: the score against each key's value, one panel per key;
* the top trials, what pruning saved, and the final comparison on the test set.

Plots are matplotlib files (no plotly), written with the Agg backend.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from distillab.core.files import write_json_atomic, write_text_atomic

TOP_TRIALS = 10


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _score(t) -> float | None:
    """A trial's score: its value, or the last validation score a pruned trial reported."""
    if t.value is not None:
        return float(t.value)
    if t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return None


def plot_history(trials: list, direction: str, metric: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    best, line = None, []
    for t in trials:
        s = _score(t)
        if t.state.name == "COMPLETE":
            ax.scatter(t.number, s, color="tab:blue", s=18, zorder=3)
            best = s if best is None or (s > best if direction == "maximize" else s < best) else best
        elif t.state.name == "PRUNED" and s is not None:
            ax.scatter(t.number, s, color="tab:gray", marker="x", s=18, zorder=3)
        line.append((t.number, best))
    xs = [n for n, b in line if b is not None]
    ax.step(xs, [b for _, b in line if b is not None], where="post", color="tab:orange", label="best so far")
    ax.scatter([], [], color="tab:blue", s=18, label="complete")
    ax.scatter([], [], color="tab:gray", marker="x", s=18, label="pruned (last report)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_importance(importances: dict[str, float], path: Path) -> None:
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set_xlabel("importance (fANOVA: share of the score's variance)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_slices(trials: list, space: dict[str, dict], metric: str, path: Path) -> None:
    plt = _plt()
    keys = list(space)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    for ax, key in zip(axes.flat, keys):
        xs = [t.params.get(key) for t in done]
        ys = [t.value for t in done]
        categorical = space[key]["kind"] == "categorical"
        if categorical:
            choices = [str(c) for c in space[key]["choices"]]
            ax.scatter([choices.index(str(x)) for x in xs], ys, c=[t.number for t in done], cmap="viridis", s=16)
            ax.set_xticks(range(len(choices)), choices, fontsize=7)
        else:
            ax.scatter(xs, ys, c=[t.number for t in done], cmap="viridis", s=16)
            if space[key].get("log"):
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # a decade's minor labels overlap
        ax.set_title(key, fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def importances_of(study) -> dict[str, float] | None:
    """fANOVA importances, or None with too few complete trials (fewer than 2) to say anything."""
    import optuna

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2 or not complete[0].params:
        return None
    try:
        with warnings.catch_warnings():  # equal scores everywhere: Optuna warns, and the shares are equal
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):  # nothing to apportion
        return None


def pruning_cost(trials: list, epochs: int) -> dict[str, Any]:
    """Trials completed and pruned, their seconds, and the seconds pruning saved: each pruned trial's time
    scaled to all ``epochs`` at its own per-epoch rate, minus what it took."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    seconds = {t.number: float(t.user_attrs.get("seconds", 0.0)) for t in trials}
    saved = 0.0
    for t in pruned:
        ran = max(1, int(t.user_attrs.get("epochs") or t.last_step or 1))
        saved += seconds[t.number] * (epochs / ran - 1)
    return {"complete": len(complete), "pruned": len(pruned),
            "failed": sum(t.state.name == "FAIL" for t in trials),
            "seconds_complete": sum(seconds[t.number] for t in complete),
            "seconds_pruned": sum(seconds[t.number] for t in pruned), "seconds_saved": saved,
            "epochs_pruned": [int(t.user_attrs.get("epochs") or t.last_step or 0) for t in pruned]}


def write_report(folder: Path, study, spec, final: dict | None, *, searched_s: float) -> dict:
    """``report.md``, the figures and ``report.json`` in ``folder``; the figures as a dict."""
    trials = sorted(study.trials, key=lambda t: t.number)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    reverse = spec.direction == "maximize"
    top = sorted(complete, key=lambda t: t.value, reverse=reverse)[:TOP_TRIALS]
    plot_history(trials, spec.direction, spec.metric, folder / "history.png")
    plot_slices(trials, spec.space, spec.metric, folder / "slice.png")
    importances = importances_of(study)
    if importances:
        plot_importance(importances, folder / "importance.png")
    cost = pruning_cost(trials, spec.epochs)
    best = top[0]
    lines = [f"# Tuning `{spec.config}`", "",
             f"{len(trials)} trials ({cost['complete']} complete, {cost['pruned']} pruned, {cost['failed']} failed) "
             f"of {len(spec.space)} keys; score: **{spec.metric}** of the last epoch ({spec.direction}), on "
             f"{spec.val_fraction:g} of the training set held out (stratified). The test set was read by no trial's "
             f"selection. Sampler TPE, pruner {spec.pruner}; storage `{spec.storage}`; {searched_s:.0f} s of search "
             "in this session.", "",
             "| key | searched |", "|---|---|"]
    for key, p in spec.space.items():
        desc = (f"one of {p['choices']}" if p["kind"] == "categorical" else
                f"{p['kind']} in [{p['low']:g}, {p['high']:g}]" + (" (log)" if p.get("log") else ""))
        lines.append(f"| `{key}` | {desc} |")
    lines += ["", f"**Best**: trial {best.number}, {spec.metric} {best.value:.4f}: "
              + ", ".join(f"`{k}={_fmt(v)}`" for k, v in best.params.items()) + " (`best.yaml`).", "",
              "![history](history.png)", ""]
    if importances:
        lines += ["| key | importance |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in importances.items()]
        lines += ["", "![importance](importance.png)", ""]
    lines += ["![slices](slice.png)", "", f"## Top {len(top)} trials", "",
              "| trial | " + spec.metric + " | epochs | s | " + " | ".join(f"`{k}`" for k in spec.space) + " |",
              "|---|---|---|---|" + "---|" * len(spec.space)]
    for t in top:
        lines.append(f"| {t.number} | {t.value:.4f} | {t.user_attrs.get('epochs', '')} | "
                     f"{t.user_attrs.get('seconds', 0):.0f} | "
                     + " | ".join(_fmt(t.params.get(k)) for k in spec.space) + " |")
    lines += ["", "## Pruning", "",
              f"{cost['complete']} trials ran to the end ({cost['seconds_complete']:.0f} s), {cost['pruned']} were "
              f"stopped early ({cost['seconds_pruned']:.0f} s; after epochs {cost['epochs_pruned']}); run to the end "
              f"they would have taken about {cost['seconds_saved']:.0f} s more.", ""]
    if final is not None:
        p = final["p"]
        what = "test bits per byte (lower is better)" if final.get("metric") == "test_bpb" else "test top-1"
        lines += ["## On the test set", "",
                  f"The best settings and the config's own, {final['seeds']} seeds each (0 .. {final['seeds'] - 1}), "
                  f"trained on the whole training set as the config says, last-epoch {what}:", "",
                  f"| settings | {what} (mean ± std) | runs |", "|---|---|---|",
                  f"| tuned ({', '.join(f'{k}={_fmt(v)}' for k, v in best.params.items())}) | {final['tuned']['mean']:.2f} ± "
                  f"{final['tuned']['std']:.2f} | {len(final['tuned']['values'])} |",
                  f"| the config's defaults | {final['default']['mean']:.2f} ± {final['default']['std']:.2f} | "
                  f"{len(final['default']['values'])} |", "",
                  f"Welch's p: {'-' if p is None else f'{p:.3g}'}.", ""]
    write_text_atomic(folder / "report.md", "\n".join(lines))
    figures = {"trials": len(trials), "best": {"number": best.number, "value": best.value, "params": best.params},
               "importances": importances, "pruning": cost, "final": final, "searched_s": searched_s}
    write_json_atomic(folder / "report.json", figures)
    return figures


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
