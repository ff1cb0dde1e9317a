"""An in-memory cache of a frozen teacher's outputs, keyed by sample index and exact augmentation.

FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022)
observes that a frozen teacher's output is a function of its input only: it stores the teacher's
soft labels per crop region (with the crop coordinates and flip) once, so later epochs replay those
crops and read the soft labels instead of running the teacher.

Here the outputs are stored *lazily during training*, in memory, keyed by the exact augmentation
parameters, rather than precomputed to disk: the first time a (sample, augmentation) pair is seen
the teacher runs and its outputs are stored; any later occurrence of the same pair reads them back.
A sample's augmentation is one integer in ``[0, key_space)`` (``param_keys`` of the augmentation,
see :class:`~distillab.data.augment.AugmentPlan`), so row ``index * key_space + key`` of a dense table
holds its outputs. With random crops over the full parameter space repeats are rare (CIFAR's 4-pixel
crop plus flip has 162 settings per image); ``data.augment_variants=R`` restricts every sample to
``R`` fixed draws (FKD style), so ``key_space = R`` and from the second visit on most lookups hit.

Memory: ``num_samples * key_space * (logits_dim + sum(prod(feature_dims))) * bytes(dtype)`` plus one
byte per row for the ``filled`` flags. For example CIFAR-100 with 50 000 images, ``R = 8`` and
float16 logits: ``50 000 * 8 * 100 * 2`` B = 80 MB.

A language model's logits are one row per token: a block of ``L`` tokens over a vocabulary of ``V`` is one
``(L, V)`` row (``logits_shape``), so ``num_blocks * L * V * bytes(dtype)``; the stdlib corpus at 1 M
training bytes, blocks of 128 and the byte vocabulary is 1 GiB in float32 (exact: the divergence reads the
same numbers it would recompute) or 512 MiB in float16.

Only the teacher's logits and pooled features (flat vectors such as the penultimate embedding) can
be cached. Methods that read the teacher's intermediate feature maps (FitNets, AT, review-based
fusion, ...) need the maps themselves, which are far too large to store per augmentation, so they
cannot use this cache and must run the teacher every step.

Values are stored in ``dtype`` and always returned in float32. :meth:`TeacherCache.fetch` returns
freshly computed rows *after* the round trip through ``dtype``, so a row reads the same whether it
was a hit or a miss (a run whose cache starts empty, e.g. after resuming, sees the same values).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Features = dict[str, torch.Tensor]


class TeacherCache:
    """Dense tables of teacher logits and pooled features, one row per (sample, augmentation key).

    ``num_samples``: size of the training set (sample indices in ``[0, num_samples)``).
    ``key_space``: keys per sample (``AugmentPlan.key_space``). ``logits_dim``: number of classes, or the
    shape of one sample's logits (``(L, V)`` for a block of a language model's tokens).
    ``feature_dims``: name -> per-sample shape of each cached feature (flat vectors in practice).
    ``dtype``: storage dtype (float16 / bfloat16 halve the memory). ``device``: where the tables live.
    ``max_bytes``: refuse to allocate more than this (ValueError saying how to shrink the cache).

    Outputs of :meth:`lookup` and :meth:`fetch` are float32 on the device of ``keys``. Counters are
    kept on the cache's device and read (one host sync) through :attr:`hits`, :attr:`misses`,
    :attr:`hit_rate`.
    """

    def __init__(self, num_samples: int, key_space: int, logits_dim: int | tuple[int, ...],
                 feature_dims: dict[str, tuple[int, ...]] | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", max_bytes: int = 4 * 2**30) -> None:
        shape = (int(logits_dim),) if isinstance(logits_dim, int) else tuple(int(d) for d in logits_dim)
        if num_samples < 1 or key_space < 1 or not shape or min(shape) < 1:
            raise ValueError(f"num_samples ({num_samples}), key_space ({key_space}) and logits_dim ({logits_dim}) "
                             "must be >= 1")
        if not dtype.is_floating_point:
            raise ValueError(f"cache dtype must be a floating point type, got {dtype}")
        self.num_samples = int(num_samples)
        self.key_space = int(key_space)
        self.logits_shape = shape
        self.logits_dim = shape[-1]
        self.feature_dims = {name: tuple(int(d) for d in dims) for name, dims in (feature_dims or {}).items()}
        self.dtype = dtype
        self.device = torch.device(device)
        self.rows = self.num_samples * self.key_space
        self.nbytes = self.bytes_needed(self.num_samples, self.key_space, shape, self.feature_dims, dtype)
        if self.nbytes > max_bytes:
            per_row = self.nbytes // self.rows
            raise ValueError(
                f"teacher cache needs {self.nbytes / 2**30:.2f} GiB ({self.num_samples} samples x {self.key_space} "
                f"augmentation keys = {self.rows} rows x {per_row} B per row in {dtype}), over the limit of "
                f"{max_bytes / 2**30:.2f} GiB; bound the key space with data.augment_variants=R (R keys per "
                "sample), store a smaller cache dtype (e.g. float16), or raise train.teacher_cache_max_gb")
        self.logits = torch.zeros(self.rows, *shape, dtype=dtype, device=self.device)
        self.features = {name: torch.zeros(self.rows, *dims, dtype=dtype, device=self.device)
                         for name, dims in self.feature_dims.items()}
        self.filled = torch.zeros(self.rows, dtype=torch.bool, device=self.device)
        self._hits = torch.zeros((), dtype=torch.long, device=self.device)
        self._misses = torch.zeros((), dtype=torch.long, device=self.device)

    @staticmethod
    def bytes_needed(num_samples: int, key_space: int, logits_dim: int | tuple[int, ...],
                     feature_dims: dict[str, tuple[int, ...]] | None = None,
                     dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the tables: rows * (values per row * element size + 1 byte of ``filled`` flag)."""
        logits = logits_dim if isinstance(logits_dim, int) else math.prod(logits_dim)
        values = logits + sum(math.prod(dims) for dims in (feature_dims or {}).values())
        elem = torch.empty((), dtype=dtype).element_size()
        return num_samples * key_space * (values * elem + 1)

    def __repr__(self) -> str:
        return (f"TeacherCache(num_samples={self.num_samples}, key_space={self.key_space}, "
                f"logits={self.logits_shape}, features={self.feature_dims}, dtype={self.dtype}, "
                f"device={self.device}, {self.nbytes / 2**20:.1f} MiB)")

    def keys(self, index: torch.Tensor, param_keys: torch.Tensor) -> torch.Tensor:
        """Row of each sample: ``index * key_space + param_keys`` (long, on ``index``'s device)."""
        return index.long() * self.key_space + param_keys.to(index.device).long()

    def lookup(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Features]:
        """``(hit (B,) bool, logits (B, *logits_shape) float32, features)`` for rows ``keys``; miss rows hold
        zeros."""
        rows = keys.to(self.device)
        hit = self.filled[rows]
        n_hit = hit.sum()
        self._hits += n_hit
        self._misses += len(rows) - n_hit
        logits = self.logits[rows].to(device=keys.device, dtype=torch.float32)
        features = {name: t[rows].to(device=keys.device, dtype=torch.float32) for name, t in self.features.items()}
        return hit.to(keys.device), logits, features

    def _check(self, n: int, logits: torch.Tensor, features: Features | None) -> Features:
        features = features or {}
        if tuple(logits.shape) != (n, *self.logits_shape):
            raise ValueError(f"logits have shape {tuple(logits.shape)}, expected "
                             f"({', '.join(map(str, (n, *self.logits_shape)))})")
        missing = set(self.feature_dims) - set(features)
        if missing:
            raise ValueError(f"features {sorted(missing)} are cached but were not given")
        for name, dims in self.feature_dims.items():
            if tuple(features[name].shape) != (n, *dims):
                raise ValueError(f"feature {name!r} has shape {tuple(features[name].shape)}, expected ({n}, "
                                 f"{', '.join(map(str, dims))})")
        return features

    def store(self, keys: torch.Tensor, logits: torch.Tensor, features: Features | None = None) -> None:
        """Store the outputs of rows ``keys`` (features: every cached name, extra names are ignored)."""
        features = self._check(len(keys), logits, features)
        rows = keys.to(self.device)
        self.logits[rows] = logits.detach().to(device=self.device, dtype=self.dtype)
        for name, table in self.features.items():
            table[rows] = features[name].detach().to(device=self.device, dtype=self.dtype)
        self.filled[rows] = True

    def fetch(self, keys: torch.Tensor,
              compute: Callable[[torch.Tensor], tuple[torch.Tensor, Features | None]]
              ) -> tuple[torch.Tensor, Features]:
        """Full-batch ``(logits, features)`` in float32 for rows ``keys``, computing only the misses.

        ``compute(rows)`` gets the batch positions (long, on ``keys``' device) that missed and returns
        the teacher's ``(logits, features)`` for those positions; it is not called when every row hits.
        New rows are stored, and returned as stored (rounded to ``dtype``).
        """
        hit, logits, features = self.lookup(keys)
        miss = (~hit).nonzero().squeeze(1)  # one host sync: the number of misses
        if miss.numel() == 0:
            return logits, features
        new_logits, new_features = compute(miss)
        new_features = self._check(len(miss), new_logits, new_features)
        self.store(keys[miss], new_logits, new_features)
        logits[miss] = new_logits.detach().to(self.dtype).to(device=keys.device, dtype=torch.float32)
        for name in self.features:
            features[name][miss] = new_features[name].detach().to(self.dtype).to(device=keys.device,
                                                                                 dtype=torch.float32)
        return logits, features

    @property
    def hits(self) -> int:
        return int(self._hits)

    @property
    def misses(self) -> int:
        return int(self._misses)

    @property
    def hit_rate(self) -> float:
        """Fraction of looked-up rows that were cached (0.0 before any lookup)."""
        hits, misses = self.hits, self.misses
        return hits / (hits + misses) if hits + misses else 0.0

    @property
    def num_filled(self) -> int:
        """Number of rows holding a stored output."""
        return int(self.filled.sum())

    def reset_counters(self) -> None:
        self._hits.zero_()
        self._misses.zero_()

    def clear(self) -> None:
        """Forget every stored output (the tables keep their memory)."""
        self.filled.zero_()
        self.reset_counters()
