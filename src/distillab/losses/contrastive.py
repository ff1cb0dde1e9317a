"""Contrastive terms: CRD, contrastive representation distillation with momentum memory banks."""

from __future__ import annotations

import warnings

import torch

from distillab.core import dist as comm
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.losses.common import Embed
from distillab.losses.memory import ContrastMemory, nce_loss
from distillab.losses.sampling import MODES, ContrastSampler
from distillab.methods import register_method


@LOSSES.register("crd", description="CRD: NCE between student and teacher embeddings over memory-bank negatives")
class CRD(LossTerm):
    """Contrastive representation distillation (Tian, Krishnan & Isola 2020, arXiv 1910.10699).

    Heads ``Embed`` (Linear d -> feat_dim, then L2 normalisation) map the student's and the teacher's pooled
    embeddings to v_s and v_t. Two memory banks (n_data x feat_dim) hold past v_s and v_t of every training
    sample. For each anchor i a sampler gives contrast indices: column 0 the positive, then K negatives.
    The student anchor is scored against the teacher bank, the teacher anchor against the student bank:

        P_ij = exp(m_j . v_i / T) / Z,   Z = mean(exp(m . v / T)) * n_data on the first batch, then frozen
        L_side = -(1/B) sum_i [log(P_i0 / (P_i0 + K Pn + eps)) + sum_k log(K Pn / (P_ik + K Pn + eps))]
        L = L_student_anchor + L_teacher_anchor,   Pn = 1 / n_data, eps = 1e-7   (paper Eq. 18, m = K)

    Scores use the banks as they were before this batch; then each bank row of the batch's samples moves
    as row <- normalise(nce_m * row + (1 - nce_m) * v). Both parts are returned ("student_anchor",
    "teacher_anchor"), so both heads train; the banks get no gradient.

    Options and reference defaults (RepDistiller ``train_student.py``, ``crd/criterion.py``, ``crd/memory.py``,
    ``dataset/cifar100.py`` ``CIFAR100InstanceSample``): feat_dim 128, nce_k 16384 negatives, nce_t 0.07,
    nce_m 0.5, mode ``"exact"`` (positive = the sample itself; ``"relax"``: a random sample of its class).
    Negatives are drawn uniformly without replacement from the samples of the other classes (see
    :class:`~distillab.losses.sampling.ContrastSampler`). seed: seed of the sampler's own generator, whose
    state is checkpointed with the term. CIFAR-100 weight (``scripts/run_cifar_distill.sh``): CE 1 + CRD 0.8,
    KD 0 (CRD) or 1 (CRD+KD).

    Where we differ from RepDistiller, and why:

    - The loss is a scalar; RepDistiller's has shape [1] (a sum over a kept dimension). Same value.
    - Negatives are drawn for the whole batch on the training device instead of per sample in the data
      loader (same distribution, another random stream), so any data set with labels works unchanged.
    - nce_k larger than the smallest other-class pool (tiny data sets: MNIST-1D has 4000 training samples)
      is clipped to that pool, with a warning, so negatives stay distinct; RepDistiller would draw that
      class's negatives with replacement. The sampler still does so if handed a K above a pool.
    - Without the training labels (a data set that does not expose ``labels``) negatives are drawn
      uniformly over all other samples, same class included, and ``relax`` is refused; RepDistiller's
      fallback (its alias sampler) draws uniformly over all samples with replacement.
    - The NCE ratios are computed in log space (softplus) and in fp32 under autocast: the same value,
      finite for any score. Scores may be taken as one (B, n_data) product and then gathered, when that
      is cheaper than gathering B x (K + 1) bank rows: the same numbers.
    - RepDistiller's ``percent`` option (a fixed random subset of each class's negatives, default 1.0)
      is not offered.
    """

    student_features = ("embedding",)
    teacher_features = ("embedding",)

    def __init__(self, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5,
                 mode: str = "exact", seed: int = 0) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be positive, got {feat_dim}")
        if nce_k < 1:
            raise ValueError(f"nce_k must be at least 1, got {nce_k}")
        if nce_t <= 0:
            raise ValueError(f"nce_t must be positive, got {nce_t}")
        if not 0.0 <= nce_m < 1.0:
            raise ValueError(f"nce_m must be in [0, 1), got {nce_m}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.mode, self.seed = mode, seed

    def setup(self, ctx: SetupContext) -> None:
        s_dim = ctx.student_shapes["embedding"][1:].numel()
        t_dim = ctx.teacher_shapes["embedding"][1:].numel()
        self.embed_s = Embed(s_dim, self.feat_dim)
        self.embed_t = Embed(t_dim, self.feat_dim)
        self.num_data = ctx.num_train
        self.memory = ContrastMemory(ctx.num_train, self.feat_dim, self.nce_t, self.nce_m)
        sampler = ContrastSampler(ctx.num_train, ctx.train_labels, self.nce_k, self.mode, self.seed)
        usable = sampler.max_distinct_negatives
        if usable < 1:
            raise ValueError("CRD needs negatives from other classes, but every training sample has the same label")
        if self.nce_k > usable:
            what = ("samples outside the largest class" if ctx.train_labels is not None
                    else "other samples")
            warnings.warn(f"CRD: nce_k={self.nce_k} is more than the {usable} {what} of the {ctx.num_train}-sample "
                          f"training set; using nce_k={usable} (set nce_k lower to silence this)", stacklevel=2)
            sampler.num_negatives = usable
        self.sampler = sampler

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        v_s = self.embed_s(batch.student.features["embedding"])
        v_t = self.embed_t(batch.teacher.features["embedding"])
        # drawn for the global batch from the generator every rank shares, then this rank's rows (DDP)
        global_index = comm.gather_cat(batch.index)
        contrast = self.sampler(global_index)[comm.local_slice(len(global_index))]
        log_p = self.memory(v_s, v_t, batch.index, contrast)
        return {"student_anchor": nce_loss(log_p["student"], self.num_data),
                "teacher_anchor": nce_loss(log_p["teacher"], self.num_data)}


register_method(
    "crd",
    "CRD: CE + 0.8 contrastive representation distillation (RepDistiller's CIFAR-100 preset)",
    {"ce": ("ce", 1.0), "crd": ("crd", 0.8)},
    reference="Tian et al. 2020; RepDistiller scripts/run_cifar_distill.sh --distill crd -a 0 -b 0.8",
)
register_method(
    "crd_kd",
    "CRD+KD: CE + KD (T = 4) + 0.8 CRD (RepDistiller's CIFAR-100 preset)",
    {"ce": ("ce", 1.0), "kd": ("kd", 1.0, {"temperature": 4.0}), "crd": ("crd", 0.8)},
    reference="Tian et al. 2020; RepDistiller scripts/run_cifar_distill.sh --distill crd -a 1 -b 0.8",
)
