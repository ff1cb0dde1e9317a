"""Batched augmentations on whatever device the batch is on, driven by an explicit generator.

Each augmentation is split in two steps so that a cache can key on what was drawn:

* ``sample_params(n, generator)`` draws the random parameters of ``n`` samples (a dict of tensors on
  the generator's device; the generator is advanced by a fixed amount for a given ``n``);
* ``apply(x, params)`` applies them to a batch, deterministically, on ``x``'s device.

``aug(x, generator)`` does both. ``param_keys(params)`` maps each sample's parameters one-to-one
onto ``[0, key_space)``, so a sample's exact augmentation is one integer (the key of a teacher
output cache, :class:`~distillab.engine.teacher_cache.TeacherCache`). :class:`AugmentPlan` wraps an
augmentation for the engine, optionally restricting each sample to ``R`` fixed draws (FKD style).

The same generator state gives the same parameters whichever
device the batch lives on, so a run resumed from a saved generator state replays the same
augmentations. With ``generator=None`` the global torch generator is used.

Augmentations run *after* normalisation (see :class:`~distillab.data.base.DataBundle`), so padding
must use the value that a black pixel takes once normalised, ``(0 - mean) / std`` per channel
(:func:`normalised_black`): torchvision's ``RandomCrop(32, padding=4)`` pads the raw image with 0
(black) before ``Normalize``, and padding the normalised batch with ``normalised_black`` gives
exactly the same result.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

Params = dict[str, torch.Tensor]


def take_params(params: Params, rows: slice | torch.Tensor) -> Params:
    """Select samples ``rows`` (a slice or an index tensor) of every tensor in ``params``."""
    if isinstance(rows, torch.Tensor):
        return {k: v[rows.to(v.device)] for k, v in params.items()}
    return {k: v[rows] for k, v in params.items()}


def normalised_black(mean: Sequence[float], std: Sequence[float]) -> list[float]:
    """The per-channel value a raw 0 (black) takes after normalisation: ``(0 - mean) / std``."""
    if len(mean) != len(std):
        raise ValueError(f"mean ({len(mean)}) and std ({len(std)}) differ in length")
    return [(0.0 - float(m)) / float(s) for m, s in zip(mean, std)]


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class RandomCropFlip:
    """Random crop of a padded batch plus random horizontal flip, per sample, for (N, C, H, W).

    Equivalent to torchvision's ``RandomCrop(size=(H, W), padding=padding)`` followed by
    ``RandomHorizontalFlip(0.5)``, applied to each sample independently. ``fill`` is the padding
    value, one float or one per channel; for a normalised batch pass
    ``normalised_black(mean, std)`` so the padding matches torchvision's black padding of the raw
    image. The crop window's top-left corner in the padded image is drawn uniformly in
    ``[0, 2 * padding]`` along each axis; the flip mirrors the cropped window.

    Parameters (``sample_params``): ``offsets`` (N, 2) long, (row, column) of the window's top-left
    corner in the padded image; ``flips`` (N,) bool. The offsets are drawn before the flips.
    No Python loop over samples: the output is one ``gather`` from the padded batch.
    """

    def __init__(self, padding: int = 4, flip: bool = True, fill: float | Sequence[float] = 0.0) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.fill = [float(fill)] if isinstance(fill, (int, float)) else [float(f) for f in fill]

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip}, fill={self.fill})"

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> Params:
        device = _generator_device(generator)
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator, device=device)
        if self.flip:
            flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
        else:
            flips = torch.zeros(n, dtype=torch.bool, device=device)
        return {"offsets": offsets, "flips": flips}

    def _fill_tensor(self, channels: int, x: torch.Tensor, fill: Sequence[float] | None = None) -> torch.Tensor:
        values = self.fill if fill is None else [float(f) for f in fill]
        if len(values) not in (1, channels):
            raise ValueError(f"fill has {len(values)} values for a batch with {channels} channels")
        out = torch.tensor(values, dtype=x.dtype, device=x.device)
        return out.expand(channels) if out.numel() == 1 else out

    @property
    def key_space(self) -> int:
        """Number of distinct parameter settings: ``(2 * padding + 1) ** 2 * (2 if flip else 1)``."""
        return (2 * self.padding + 1) ** 2 * (2 if self.flip else 1)

    def param_keys(self, params: Params) -> torch.Tensor:
        """(N,) long in ``[0, key_space)``, one-to-one with (row offset, column offset, flip).

        ``key = (row * (2p + 1) + col) * F + flip`` with ``F = 2`` when flipping is on, else ``F = 1``
        and the flip is left out (it is always False then).
        """
        offsets = params["offsets"].long()
        side = 2 * self.padding + 1
        keys = offsets[:, 0] * side + offsets[:, 1]
        if self.flip:
            keys = keys * 2 + params["flips"].to(keys.device).long()
        return keys

    def apply(self, x: torch.Tensor, params: Params, fill: Sequence[float] | None = None) -> torch.Tensor:
        """The crops and flips ``params`` on ``x``; ``fill`` replaces the padding value (another normalisation)."""
        if x.dim() != 4:
            raise ValueError(f"RandomCropFlip expects (N, C, H, W), got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        p = self.padding
        offsets = params["offsets"].to(x.device)
        flips = params["flips"].to(x.device)
        if len(offsets) != n or len(flips) != n:
            raise ValueError(f"params are for {len(offsets)} samples, batch has {n}")
        hp, wp = h + 2 * p, w + 2 * p
        if p > 0:
            padded = self._fill_tensor(c, x, fill).view(1, c, 1, 1).expand(n, c, hp, wp).clone()
            padded[:, :, p : p + h, p : p + w] = x
        else:
            padded = x
        rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (N, H)
        cols = torch.arange(w, device=x.device).expand(n, w)
        cols = torch.where(flips[:, None], (w - 1) - cols, cols) + offsets[:, 1:2]  # (N, W)
        flat = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        out = padded.reshape(n, c, hp * wp).gather(2, flat)
        return out.view(n, c, h, w)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample_params(len(x), generator))


class RandomShift1D:
    """Random shift along the last axis, per sample, for (N, C, L) signals.

    ``out[..., t] = x[..., t - s]`` with ``s`` drawn uniformly in ``[-max_shift, max_shift]`` (a
    positive ``s`` moves the signal right). ``mode="zero"`` (default) fills the uncovered positions
    with ``fill`` (0 by default, which on a normalised batch is the training mean);
    ``mode="circular"`` wraps around instead.

    Parameters (``sample_params``): ``shifts`` (N,) long.
    """

    def __init__(self, max_shift: int, mode: str = "zero", fill: float = 0.0) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if mode not in ("zero", "circular"):
            raise ValueError(f"mode must be 'zero' or 'circular', got {mode!r}")
        self.max_shift = int(max_shift)
        self.mode = mode
        self.fill = float(fill)

    def __repr__(self) -> str:
        return f"RandomShift1D(max_shift={self.max_shift}, mode={self.mode!r}, fill={self.fill})"

    def sample_params(self, n: int, generator: torch.Generator | None = None) -> Params:
        device = _generator_device(generator)
        m = self.max_shift
        shifts = torch.randint(-m, m + 1, (n,), generator=generator, device=device)
        return {"shifts": shifts}

    @property
    def key_space(self) -> int:
        """Number of distinct parameter settings: ``2 * max_shift + 1``."""
        return 2 * self.max_shift + 1

    def param_keys(self, params: Params) -> torch.Tensor:
        """(N,) long in ``[0, key_space)``: ``shift + max_shift``."""
        return params["shifts"].long() + self.max_shift

    def apply(self, x: torch.Tensor, params: Params, fill: Sequence[float] | None = None) -> torch.Tensor:
        """The shifts ``params`` on ``x``; ``fill`` replaces the value of uncovered positions."""
        if x.dim() != 3:
            raise ValueError(f"RandomShift1D expects (N, C, L), got shape {tuple(x.shape)}")
        n, c, length = x.shape
        shifts = params["shifts"].to(x.device)
        if len(shifts) != n:
            raise ValueError(f"params are for {len(shifts)} samples, batch has {n}")
        src = torch.arange(length, device=x.device)[None, :] - shifts[:, None]  # (N, L)
        if self.mode == "circular":
            return x.gather(2, (src % length)[:, None, :].expand(n, c, length))
        valid = (src >= 0) & (src < length)
        out = x.gather(2, src.clamp(0, length - 1)[:, None, :].expand(n, c, length))
        return torch.where(valid[:, None, :], out, torch.full_like(out, self.fill if fill is None else float(fill[0])))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample_params(len(x), generator))


def _is_keyed(augment: Any) -> bool:
    return all(callable(getattr(augment, name, None)) for name in ("sample_params", "apply", "param_keys")) \
        and hasattr(augment, "key_space")


class AugmentPlan:
    """How the engine augments a batch and which integer key names each sample's augmentation.

    ``draw(index, generator) -> (params, keys)`` then ``apply(x, params)``; ``keys`` is (B,) long in
    ``[0, key_space)``, so ``(index, key)`` identifies a sample's exact augmented input.

    * Without ``variants``: ``params = augment.sample_params(len(index), generator)`` (the generator
      is advanced exactly as ``augment(x, generator)`` advances it, so ``apply(x, params)`` equals
      ``augment(x, generator)`` for the same generator state), ``keys = augment.param_keys(params)``
      and ``key_space = augment.key_space``.
    * With ``variants=R`` (FKD style): at construction ``num_samples * R`` parameter draws are made
      once with a CPU generator seeded by ``seed`` and moved to ``device``; row ``i * R + v`` is
      variant ``v`` of sample ``i``. ``draw`` picks ``v`` uniformly in ``[0, R)`` per sample with the
      generator, so each sample only ever sees its ``R`` fixed augmentations; ``keys = v`` and
      ``key_space = R``. Params and keys then live on ``device``.
    * ``augment=None``: ``draw`` returns ``({}, zeros)``, ``key_space`` is 1 and ``apply`` returns ``x``.
    * A plain callable ``augment(x, generator)`` without ``sample_params`` / ``param_keys`` /
      ``key_space``: ``keyed`` is False, ``draw`` returns ``(None, None)`` and the engine calls
      ``augment_plain(x, generator)``; asking for ``variants`` or for ``key_space`` raises ValueError.
    """

    def __init__(self, augment: Callable[..., torch.Tensor] | None, num_samples: int, variants: int | None = None,
                 seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.augment = augment
        self.num_samples = int(num_samples)
        self.variants = None if variants is None else int(variants)
        self.device = torch.device(device)
        self.keyed = augment is None or _is_keyed(augment)
        self.table: Params | None = None
        if self.variants is not None:
            if self.variants < 1:
                raise ValueError(f"variants must be >= 1, got {self.variants}")
            if not self.keyed:
                raise ValueError(f"augmentation {augment!r} has no sample_params/param_keys/key_space, so it "
                                 "cannot be restricted to fixed variants; use RandomCropFlip / RandomShift1D or "
                                 "leave variants unset")
            if augment is not None:
                gen = torch.Generator().manual_seed(int(seed))
                params = augment.sample_params(self.num_samples * self.variants, gen)
                self.table = {k: v.to(self.device) for k, v in params.items()}

    def __repr__(self) -> str:
        return f"AugmentPlan({self.augment!r}, num_samples={self.num_samples}, variants={self.variants})"

    @property
    def active(self) -> bool:
        """Whether there is an augmentation at all."""
        return self.augment is not None

    @property
    def key_space(self) -> int:
        """Number of distinct keys per sample."""
        if not self.keyed:
            raise ValueError(f"augmentation {self.augment!r} has no param_keys/key_space: its draws cannot be keyed")
        if self.augment is None:
            return 1
        if self.variants is not None:
            return self.variants
        return int(self.augment.key_space)

    def draw(self, index: torch.Tensor, generator: torch.Generator | None = None
             ) -> tuple[Params | None, torch.Tensor | None]:
        """Parameters and keys for the samples ``index`` (B,) of one batch."""
        n = len(index)
        if not self.keyed:
            return None, None
        if self.augment is None:
            return {}, torch.zeros(n, dtype=torch.long, device=index.device)
        if self.table is None:
            params = self.augment.sample_params(n, generator)
            return params, self.augment.param_keys(params)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        v = torch.randint(0, self.variants, (n,), generator=generator, device=gen_device).to(self.device)
        rows = index.to(self.device).long() * self.variants + v
        return take_params(self.table, rows), v

    def apply(self, x: torch.Tensor, params: Params | None, fill: Sequence[float] | None = None) -> torch.Tensor:
        """Apply drawn parameters to a batch (``x`` itself when there is no augmentation); ``fill``: the padding
        value for a batch normalised otherwise than the main input (None: the augmentation's own)."""
        if self.augment is None:
            return x
        if params is None:
            raise ValueError(f"no params to apply for {self.augment!r}; call augment_plain(x, generator) instead")
        return self.augment.apply(x, params) if fill is None else self.augment.apply(x, params, fill=fill)

    def augment_plain(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment without keys: ``augment(x, generator)`` (``x`` itself when there is no augmentation)."""
        return x if self.augment is None else self.augment(x, generator)
