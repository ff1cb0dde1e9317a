"""Loss terms, one family per file; importing this package registers them all."""

from distillab.losses import response  # noqa: F401  (registers terms)
from distillab.losses.base import LOSSES, Batch, LossTerm, ModelOutputs, SetupContext

__all__ = ["LOSSES", "Batch", "LossTerm", "ModelOutputs", "SetupContext"]
