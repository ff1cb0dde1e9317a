"""CRD's contrast indices: for each anchor of a batch, one positive and K negatives among the training set.

RepDistiller draws them per sample in the data set's ``__getitem__`` with NumPy (``CIFAR100InstanceSample``);
here a whole batch is drawn at once with tensor ops on the training device, from a ``torch.Generator``
that the sampler owns and checkpoints, so a resumed run draws exactly the indices an uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("exact", "relax")
_NEVER = 2.0  # a key above every uniform draw in [0, 1): the index is never among the K smallest


class ContrastSampler(nn.Module):
    """Contrast indices of shape (B, K + 1): column 0 the positive, columns 1..K the negatives.

    Negatives: K indices drawn uniformly **without replacement** from the training samples of the other
    classes (uniform keys, the K smallest kept). Where a class's pool of other-class samples is smaller
    than K, that class's rows are drawn uniformly **with** replacement, as RepDistiller does
    (``np.random.choice(..., replace=k > len(pool))``).

    Positive: ``mode="exact"``: the anchor's own index; ``mode="relax"``: a uniformly drawn sample of the
    anchor's class (possibly itself), RepDistiller's ``relax`` mode. Either way the memory rows that are
    updated are the anchor's own (the caller's business, not the sampler's).

    Without labels (``labels=None``) every sample is its own class: negatives are drawn uniformly over all
    other indices, and ``relax`` is refused.

    The generator is seeded with ``seed``, lives on the device of the indices it is asked for, and its state
    is this module's extra state (a uint8 tensor in the state dict; empty before the first draw).
    """

    def __init__(self, num_samples: int, labels: torch.Tensor | None, num_negatives: int,
                 mode: str = "exact", seed: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if labels is None and mode == "relax":
            raise ValueError("mode 'relax' draws a same-class positive and needs the training labels, "
                             "which this data set does not provide: use mode 'exact'")
        if num_negatives < 1:
            raise ValueError(f"the number of negatives must be at least 1, got {num_negatives}")
        if labels is None:
            labels = torch.arange(num_samples)
        labels = torch.as_tensor(labels).detach().to("cpu", torch.long).flatten()
        if len(labels) != num_samples:
            raise ValueError(f"{len(labels)} labels for {num_samples} samples")
        if labels.min() < 0:
            raise ValueError("labels must be non-negative class indices")
        counts = torch.bincount(labels)
        self.num_samples = num_samples
        self.num_negatives = num_negatives
        self.mode = mode
        self.seed = seed
        # class tables: sample indices sorted by class; class c occupies order[start[c] : start[c] + count[c]]
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("order", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self._generator: torch.Generator | None = None
        self._pending_state: torch.Tensor | None = None

    @property
    def max_distinct_negatives(self) -> int:
        """The largest K every anchor can draw without repeats: the smallest other-class pool."""
        return self.num_samples - int(self.class_count.max())

    # ------------------------------------------------------------------ generator and its state

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            pending = self._pending_state
            if pending is not None:
                if pending.numel() != gen.get_state().numel():
                    raise RuntimeError(
                        f"the sampler's saved generator state does not fit a {device.type} generator: a run "
                        "is resumed on the device type it was checkpointed on")
                gen.set_state(pending)
                self._pending_state = None
            self._generator = gen
        return self._generator

    def get_extra_state(self) -> torch.Tensor:
        if self._generator is not None:
            return self._generator.get_state()
        if self._pending_state is not None:
            return self._pending_state.clone()
        return torch.empty(0, dtype=torch.uint8)  # no draw yet: the generator will start from `seed`

    def set_extra_state(self, state: torch.Tensor) -> None:
        state = torch.as_tensor(state).detach().to("cpu", torch.uint8)
        self._generator = None
        self._pending_state = state.clone() if state.numel() else None

    # ------------------------------------------------------------------ drawing

    @torch.no_grad()
    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Contrast indices (B, K + 1) for the anchors at training-set indices ``index`` (B,)."""
        index = index.to(self.labels.device, torch.long)
        gen = self.generator(index.device)
        anchor_labels = self.labels[index]
        positive = index if self.mode == "exact" else self._same_class(anchor_labels, gen)
        negatives = self._other_class(anchor_labels, gen)
        return torch.cat([positive[:, None], negatives], dim=1)

    def _same_class(self, anchor_labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        count = self.class_count[anchor_labels]
        u = torch.rand(len(anchor_labels), generator=gen, device=anchor_labels.device)
        offset = torch.minimum((u * count).long(), count - 1)  # guard against u * count rounding up to count
        return self.order[self.class_start[anchor_labels] + offset]

    def _other_class(self, anchor_labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        k, n, device = self.num_negatives, self.num_samples, anchor_labels.device
        b = len(anchor_labels)
        out = None
        if k <= n:
            keys = torch.rand(b, n, generator=gen, device=device)
            keys.masked_fill_(self.labels[None, :] == anchor_labels[:, None], _NEVER)
            out = keys.topk(k, dim=1, largest=False, sorted=False).indices
        if k > self.max_distinct_negatives:  # some classes' pools are too small: those rows draw with replacement
            count, start = self.class_count[anchor_labels], self.class_start[anchor_labels]
            pool = (n - count)[:, None]
            u = torch.rand(b, k, generator=gen, device=device)
            pos = torch.minimum((u * pool).long(), pool - 1)  # position in the pool = `order` without the class
            drawn = self.order[pos + count[:, None] * (pos >= start[:, None])]
            out = drawn if out is None else torch.where(pool < k, drawn, out)
        return out
