"""RDX explanations: cluster a directional affinity, pick representative samples, draw the figure.

This is the graph step of RDX (Kondapaneni, Mac Aodha and Perona, "Representational difference
explanations", 2025; reference code nkondapa/RDX ``src/rdx.py``), applied to an affinity matrix from
:func:`distillab.rdx.affinity.rdx_affinities` with model 0 = the expert (teacher) and model 1 = the
student:

1. Spectral clustering (scikit-learn, ``affinity="precomputed"``, library defaults) of the
   symmetrised affinity ``(A + A^T) / 2`` into ``k + 1`` clusters; the extra one is the *null*
   cluster.
2. Clusters renumbered in ascending order of their mean within-cluster affinity (the reference's
   ``post_process``), so cluster 0 is the one with the least shared structure: the null cluster.
3. Per cluster, the 9 samples shown are chosen as the reference's
   ``maximize_total_neighborhood_affinity`` does: every member proposes itself and its nearest
   within-cluster neighbours (Euclidean, in model 1's embedding for direction "10" and model 0's for
   "01"); the neighbourhood with the largest summed affinity wins.

Direction "10" uses A10 (student-unique: pairs the student groups that the expert separates),
direction "01" uses A01 (expert-unique). As in the reference's plots, cluster 0 is greyed out (and
gets no sample grid) when its mean affinity is below ``null_threshold`` (1.5 in the reference's MNIST
configs); above it, it holds structure of its own and is drawn like the other clusters. Pass
``null_threshold=float("inf")`` to always treat cluster 0 as null.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from distillab.tool_defaults import NULL_THRESHOLD

GRID_SIZE = 9  # samples per explanation grid (3 x 3), as in every RDX config


@dataclass(frozen=True)
class Direction:
    key: str  # "10" or "01"
    title: str  # RDX(model, reference) in the paper's notation
    meaning: str  # what its clusters are, in plain words
    matrix: str  # which affinity matrix it clusters
    model: int  # whose embedding picks the nearest neighbours: 0 = expert, 1 = student


DIRECTIONS = {
    "10": Direction("10", "RDX(student, expert)", "groups the student makes that the expert separates", "A10", 1),
    "01": Direction("01", "RDX(expert, student)", "groups the expert makes that the student separates", "A01", 0),
}


@dataclass
class Explanation:
    """The clusters of one direction: labels per sample (ascending mean affinity), their mean
    affinities, and the representative samples (indices into the N samples) of every cluster."""

    direction: Direction
    labels: np.ndarray
    mean_affinity: np.ndarray
    representatives: dict[int, np.ndarray] = field(default_factory=dict)
    null_threshold: float = NULL_THRESHOLD

    @property
    def num_clusters(self) -> int:
        return len(self.mean_affinity)

    def is_null(self, c: int) -> bool:
        """Cluster 0 is the null cluster when its mean affinity is below the threshold."""
        return c == 0 and bool(self.mean_affinity[0] < self.null_threshold)

    @property
    def shown(self) -> list[int]:
        """The clusters that get a sample grid: all but the null cluster."""
        return [c for c in range(self.num_clusters) if not self.is_null(c)]


def order_clusters_by_affinity(labels: np.ndarray, affinity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber clusters 0, 1, ... in ascending order of mean within-cluster affinity (diagonal included).

    Returns (new labels, mean affinity of each new cluster). Equal means keep the old order.
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    means = np.array([affinity[np.ix_(labels == c, labels == c)].mean() for c in ids], dtype=np.float64)
    order = np.argsort(means, kind="stable")
    new = np.empty_like(labels)
    for new_id, old in enumerate(order):
        new[labels == ids[old]] = new_id
    return new, means[order]


def spectral_clusters(affinity: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spectral clustering of ``(A + A^T) / 2`` into ``k + 1`` clusters, relabelled so cluster 0 is the null one."""
    from sklearn.cluster import SpectralClustering

    affinity = np.asarray(affinity, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k (clusters besides the null one) must be at least 1, got {k}")
    if len(affinity) < k + 1:
        raise ValueError(f"{len(affinity)} samples cannot form {k + 1} clusters: lower k or use more samples")
    sym = (affinity + affinity.T) / 2
    fitted = SpectralClustering(n_clusters=k + 1, affinity="precomputed", random_state=seed).fit(sym)
    return order_clusters_by_affinity(fitted.labels_, affinity)


def representative_neighbourhood(affinity: np.ndarray, embedding: np.ndarray, members: np.ndarray,
                                 size: int = GRID_SIZE) -> np.ndarray:
    """The ``size`` members (indices into all samples) that best show one cluster.

    Every member and its ``size - 1`` nearest fellow members (Euclidean in ``embedding``; itself first)
    form a candidate neighbourhood; the one whose affinity sub-block has the largest sum wins. Returned
    in order of distance from that anchor. Ties go to the lowest index (stable sorts, first maximum).
    """
    from scipy.spatial.distance import cdist

    members = np.asarray(members)
    if len(members) <= 1:
        return members.copy()
    m = min(size, len(members))
    x = np.asarray(embedding, dtype=np.float64)[members]
    neighbours = np.argsort(cdist(x, x), axis=1, kind="stable")[:, :m]
    block = np.asarray(affinity, dtype=np.float64)[np.ix_(members, members)]
    totals = np.array([block[np.ix_(nb, nb)].sum() for nb in neighbours])
    return members[neighbours[int(np.argmax(totals))]]


def explain_direction(affinity: np.ndarray, embedding: np.ndarray, k: int, direction: str,
                      size: int = GRID_SIZE, seed: int = 0, null_threshold: float = NULL_THRESHOLD) -> Explanation:
    """Cluster one direction's affinity and choose each cluster's representative samples.

    ``embedding``: the embedding that picks the neighbours, model 1's (student) for direction "10" and
    model 0's (expert) for "01".
    """
    affinity = np.asarray(affinity, dtype=np.float64)
    labels, means = spectral_clusters(affinity, k, seed=seed)
    reps = {int(c): representative_neighbourhood(affinity, embedding, np.flatnonzero(labels == c), size)
            for c in range(len(means))}
    return Explanation(DIRECTIONS[direction], labels, means, reps, null_threshold)


def cluster_composition(cluster_labels: np.ndarray, classes: np.ndarray | None,
                        class_names: Sequence[str] | None) -> list[dict]:
    """Per cluster: size, and the count and fraction of every class among its members."""
    out = []
    for c in range(int(cluster_labels.max()) + 1):
        mask = cluster_labels == c
        entry: dict = {"cluster": c, "size": int(mask.sum())}
        if classes is not None:
            ids, counts = np.unique(classes[mask], return_counts=True)
            names = [class_names[i] if class_names is not None else str(i) for i in ids]
            entry["counts"] = {n: int(v) for n, v in zip(names, counts)}
            entry["fractions"] = {n: round(float(v) / max(1, mask.sum()), 4) for n, v in zip(names, counts)}
        out.append(entry)
    return out


def describe_composition(entry: dict, top: int = 3) -> str:
    """'45% 3, 50% 5' from a :func:`cluster_composition` entry, largest share first."""
    fractions = sorted(entry.get("fractions", {}).items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{100 * f:.0f}% {name}" for name, f in fractions[:top])
    return text + (", ..." if len(fractions) > top else "")


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components (a zero second column for a 1-D embedding)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    comps = min(2, x.shape[1], len(x))
    out = np.zeros((len(x), 2))
    out[:, :comps] = PCA(n_components=comps).fit_transform(x)
    return out


# ---------------------------------------------------------------- figures

_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
_CLUSTER0_COLOUR = "tab:purple"  # cluster 0 when it is not null
_NULL_COLOUR = "0.65"
_MARKERS = ["o", "s", "^", "D", "v", "P"]  # one per class when there are this few classes


def cluster_colour(expl: Explanation, c: int) -> str:
    if c == 0:
        return _NULL_COLOUR if expl.is_null(0) else _CLUSTER0_COLOUR
    return _PALETTE[(c - 1) % len(_PALETTE)]


@dataclass
class FigureData:
    """What the figures of both directions share.

    pcs: 2-D PCA of the expert's and of the student's embeddings. samples: the raw inputs, images
    (N, C, H, W) or signals (N, C, L) / vectors (N, D). kind: "image", "signal" or "vector".
    classes / class_names: true class per sample and the names, or None. names: labels of the two models.
    """

    pcs: tuple[np.ndarray, np.ndarray]
    samples: np.ndarray
    kind: str
    classes: np.ndarray | None = None
    class_names: list[str] | None = None
    names: tuple[str, str] = ("expert", "student")


def _class_name(data: FigureData, i: int) -> str:
    if data.classes is None:
        return ""
    c = int(data.classes[i])
    return data.class_names[c] if data.class_names is not None else str(c)


def _class_markers(data: FigureData) -> dict[int, str] | None:
    """A marker per class when there are few enough classes to tell apart, else None."""
    if data.classes is None:
        return None
    present = np.unique(data.classes)
    return {int(c): m for c, m in zip(present, _MARKERS)} if len(present) <= len(_MARKERS) else None


def _draw_pca(ax, pc: np.ndarray, expl: Explanation, data: FigureData, title: str) -> None:
    markers = _class_markers(data)
    for c in range(expl.num_clusters):
        mask = expl.labels == c
        style = dict(s=9, alpha=0.3, linewidths=0) if expl.is_null(c) else dict(s=18, alpha=0.9, linewidths=0.3,
                                                                      edgecolors="k")
        if markers is not None:
            for cls in np.unique(data.classes[mask]):
                sel = mask & (data.classes == cls)
                ax.scatter(pc[sel, 0], pc[sel, 1], color=cluster_colour(expl, c), marker=markers[int(cls)], **style)
        else:
            ax.scatter(pc[mask, 0], pc[mask, 1], color=cluster_colour(expl, c), **style)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC 1", fontsize=8)
    ax.set_ylabel("PC 2", fontsize=8)
    ax.tick_params(labelsize=7)


def _legends(ax_clusters, ax_classes, expl: Explanation, data: FigureData) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=cluster_colour(expl, c),
                      label=f"cluster {c}" + (" (null)" if expl.is_null(c) else ""))
               for c in range(expl.num_clusters)]
    ax_clusters.legend(handles=handles, fontsize=7, loc="best", framealpha=0.8)
    markers = _class_markers(data)
    if markers is not None:
        handles = [Line2D([], [], ls="", marker=m, color="k", mfc="none",
                          label=_class_name(data, int(np.flatnonzero(data.classes == c)[0])))
                   for c, m in markers.items()]
        ax_classes.legend(handles=handles, title="class", fontsize=7, title_fontsize=7, loc="best", framealpha=0.8)


def _draw_affinity(fig, ax, affinity: np.ndarray, expl: Explanation) -> None:
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    order = np.argsort(expl.labels, kind="stable")
    sorted_aff = affinity[np.ix_(order, order)]
    lo, hi = float(sorted_aff.min()), float(sorted_aff.max())
    norm = LogNorm(vmin=lo, vmax=hi) if lo > 0 and hi > lo else None
    im = ax.imshow(sorted_aff, cmap="viridis", norm=norm, interpolation="nearest")
    start, centres = 0, []
    for c in range(expl.num_clusters):
        size = int((expl.labels == c).sum())
        edge = "0.25" if expl.is_null(c) else cluster_colour(expl, c)
        for lw, colour in ((3.4, "white"), (1.8, edge)):  # a coloured box on a white outline
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, lw=lw, edgecolor=colour))
        centres.append(start + size / 2 - 0.5)
        start += size
    ax.set_xticks(centres, [str(c) for c in range(expl.num_clusters)], fontsize=7)
    ax.set_yticks(centres, [str(c) for c in range(expl.num_clusters)], fontsize=7)
    ax.set_xlabel("cluster", fontsize=8)
    ax.set_title(f"affinity {expl.direction.matrix}\nrows and columns sorted by cluster", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.85).set_label("affinity (log scale)", fontsize=8)


def _display_range(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = float(np.min(samples)), float(np.max(samples))
    return lo, (hi if hi > lo else lo + 1.0)


def _draw_grid(cell, expl: Explanation, c: int, data: FigureData, comp: dict) -> None:
    idx = expl.representatives.get(c, np.array([], dtype=int))
    side = int(np.ceil(np.sqrt(GRID_SIZE)))
    axes = np.atleast_1d(cell.subplots(side, side)).ravel()
    lo, hi = _display_range(data.samples)
    colour = cluster_colour(expl, c)
    for ax, i in zip(axes, idx):
        x = np.asarray(data.samples[i], dtype=np.float64)
        if data.kind == "image":
            if x.shape[0] == 3:
                ax.imshow(np.clip((x.transpose(1, 2, 0) - lo) / (hi - lo), 0, 1))
            else:
                ax.imshow(x[0], cmap="gray", vmin=lo, vmax=hi)
        else:
            for channel in np.atleast_2d(x):
                ax.plot(channel, color="k", lw=0.9)
            ax.set_ylim(lo, hi)
        name = _class_name(data, int(i))
        if name:
            ax.set_title(name, fontsize=7, pad=1.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(1.5)
    for ax in axes[len(idx):]:
        ax.set_visible(False)
    text = f"cluster {c}: {comp['size']} samples"
    if comp.get("fractions"):
        text += f"\n{describe_composition(comp)}"
    cell.suptitle(text, color=colour, fontsize=9, fontweight="bold")


def draw_direction(fig, expl: Explanation, affinity: np.ndarray, data: FigureData) -> None:
    """Draw one direction into a figure or subfigure: PCA of both models and the sorted affinity on top,
    one sample grid per non-null cluster below."""
    d = expl.direction
    if not expl.is_null(0):
        null = f"no null cluster: every mean affinity is at least {expl.null_threshold:g}"
    elif np.isfinite(expl.null_threshold):
        null = f"cluster 0, grey, is the null cluster (mean affinity below {expl.null_threshold:g})"
    else:
        null = "cluster 0, grey, is the null cluster"
    fig.suptitle(f"{d.title}: {d.meaning}\n({d.matrix} in {expl.num_clusters} clusters; {null})",
                 fontsize=12, fontweight="bold")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 0.85])
    ax_e, ax_s, ax_a = top.subplots(1, 3, gridspec_kw=dict(width_ratios=[1, 1, 1.2]))
    for ax, pc, name in zip((ax_e, ax_s), data.pcs, data.names):
        _draw_pca(ax, pc, expl, data, f"{name}\nembedding, 2-D PCA")
    _legends(ax_e, ax_s, expl, data)
    _draw_affinity(top, ax_a, np.asarray(affinity), expl)
    comps = cluster_composition(expl.labels, data.classes, data.class_names)
    cells = np.atleast_1d(bottom.subfigures(1, len(expl.shown)))
    for cell, c in zip(cells, expl.shown):
        _draw_grid(cell, expl, c, data, comps[c])


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), layout="constrained")


def _width(expl: Explanation) -> float:
    return max(12.0, 3.3 * len(expl.shown))


def save_direction_figure(path: str | Path, expl: Explanation, affinity: np.ndarray, data: FigureData,
                          dpi: int = 110) -> Path:
    """One direction's figure as a PNG."""
    plt, fig = _figure(_width(expl), 9.0)
    draw_direction(fig, expl, affinity, data)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def save_overview_figure(path: str | Path, explanations: Sequence[Explanation], affinities: Sequence[np.ndarray],
                         data: FigureData, dpi: int = 120) -> Path:
    """Both directions side by side (student-unique left, expert-unique right, as in the RDD blog's Figure 2)."""
    plt, fig = _figure(sum(_width(e) for e in explanations), 9.0)
    panels = np.atleast_1d(fig.subfigures(1, len(explanations), wspace=0.02))
    for panel, expl, aff in zip(panels, explanations, affinities):
        panel.set_edgecolor("0.75")
        panel.set_linewidth(1.0)
        draw_direction(panel, expl, aff, data)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)
