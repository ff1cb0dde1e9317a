"""From a loader's raw batch to the named inputs the models read: normalise, augment, lay out.

Training batches are augmented with parameters drawn for the *global* batch (all ranks' indices, in
rank order) from the epoch's shared generator, and this rank's rows taken: every rank draws what one
process would. A data set's extra fields follow their declared rule: ``shared`` fields get the main
input's parameters (the same crop, flip or shift, so views stay aligned), ``none`` fields are left as
they are. Each sample's augmentation is also named by an integer key, for the teacher-output cache.
"""

from __future__ import annotations

import torch

from distillab.config import ConfigError
from distillab.core import dist as comm
from distillab.core.contract import INDEX, MAIN_INPUT
from distillab.data.augment import AugmentPlan, take_params
from distillab.data.base import DataBundle


class BatchPreparer:
    """Prepares the fields ``needed`` (the main input always) of raw batches from ``data``.

    keys: whether training batches must name their augmentations (a teacher-output cache reads them).
    memory_format: channels_last for 4-D inputs, or None.
    """

    def __init__(self, data: DataBundle, plan: AugmentPlan, needed: set[str], *, keys: bool = False,
                 memory_format: torch.memory_format | None = None) -> None:
        self.data = data
        self.plan = plan
        self.fields = [MAIN_INPUT] + [f for f in data.fields if f in needed]
        self.shared = [f for f in self.fields[1:] if data.fields[f].augment == "shared"]
        self.keys = keys
        self.memory_format = memory_format
        if self.shared and plan.active and not plan.keyed:
            raise ConfigError(f"data set {data.name!r}: fields {self.shared} share the main input's augmentation, but "
                             f"{plan.augment!r} cannot replay its draws (no sample_params/apply); use a keyed "
                             "augmentation (RandomCropFlip, RandomShift1D) or declare the fields augment='none'")

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is None or x.dim() != 4:
            return x
        return x.contiguous(memory_format=self.memory_format)

    def test(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalised fields, no augmentation."""
        return {f: self.layout(self.data.prepare_field(f, raw[f])) for f in self.fields}

    def train(self, raw: dict[str, torch.Tensor], generator: torch.Generator
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Normalised, augmented fields and the augmentation keys of the samples (None if not keyed)."""
        fields = {f: self.data.prepare_field(f, raw[f]) for f in self.fields}
        idx = raw[INDEX]
        keys = None
        if not self.plan.active:
            keys = torch.zeros_like(idx) if self.keys else None
        elif not self.plan.keyed:
            fields[MAIN_INPUT] = self.plan.augment_plain(fields[MAIN_INPUT], generator)
        else:
            global_idx = comm.gather_cat(idx)
            params, keys = self.plan.draw(global_idx, generator)
            if comm.is_distributed():
                rows = comm.local_slice(len(global_idx))
                params, keys = take_params(params, rows), keys[rows]
            fields[MAIN_INPUT] = self.plan.apply(fields[MAIN_INPUT], params)
            for f in self.shared:
                fields[f] = self.plan.apply(fields[f], params, fill=self.data.fields[f].fill)
        return {f: self.layout(x) for f, x in fields.items()}, keys
