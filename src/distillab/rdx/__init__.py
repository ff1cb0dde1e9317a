"""RDX, representational difference explanations (Kondapaneni, Mac Aodha & Perona 2025), for distillation.

``ranks``: neighbour ranks; ``affinity``: the locally-biased difference and the directional affinities
A01 (teacher-unique) and A10 (student-unique); ``mining``: per-sample positives, negative pools and
confusion weights at data-set scale, blockwise.
"""

from distillab.rdx.affinity import (BETA_BLOG, BETA_DEFAULT, GAMMA_DEFAULT, local_difference, rdx_affinities,
                                    resolve_gamma, standard_difference)
from distillab.rdx.mining import MiningResult, mine, select_anchors
from distillab.rdx.ranks import neighbour_ranks, ranks_from_distances

__all__ = ["BETA_BLOG", "BETA_DEFAULT", "GAMMA_DEFAULT", "MiningResult", "local_difference", "mine",
           "neighbour_ranks", "ranks_from_distances", "rdx_affinities", "resolve_gamma", "select_anchors",
           "standard_difference"]
