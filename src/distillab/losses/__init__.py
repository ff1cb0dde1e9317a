"""Loss terms, one family per file; importing this package registers them (and their method presets)."""

from distillab.losses import contrastive, datafree, feature, feature_staged, inbatch, lm, lm_offline, lm_policy, paradigms, rdd, relation, response, review  # noqa: F401,E501
from distillab.losses.base import LOSSES, Batch, EpochContext, LossTerm, ModelOutputs, SetupContext

__all__ = ["LOSSES", "Batch", "EpochContext", "LossTerm", "ModelOutputs", "SetupContext"]
