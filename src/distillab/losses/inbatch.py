"""In-batch and queue contrastive terms: DCD (learnable-scale in-batch contrast plus consistency) and RRD
(relational distillation against a FIFO queue of teacher embeddings); the dcd, dcd_kd, rrd and rrd_kd presets."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from distillab.core import dist as comm
from distillab.losses.base import LOSSES, Batch, EpochContext, LossTerm, SetupContext
from distillab.losses.common import Embed
from distillab.methods import register_method


def _embedding_dims(ctx: SetupContext) -> tuple[int, int]:
    return ctx.student_shapes["embedding"][1:].numel(), ctx.teacher_shapes["embedding"][1:].numel()


@LOSSES.register("dcd", description="DCD: in-batch contrast with a learnable logit scale and bias, plus consistency")
class DCD(LossTerm):
    """Discriminative and consistent distillation (Giakoumoglou & Stathaki 2024, arXiv 2407.11802).

    Heads ``Embed`` (Linear d -> feat_dim, then L2 normalisation) map the pooled embeddings to z_s and z_t.
    With a learnable scalar theta (init 1.0) and bias b (init 0):

        s = exp(theta).clamp(max=tau_max),   l = s * z_s z_t^T + b                      (B x B logits)
        L_con  = CE(l, arange(B))            rows: student anchors; the other B - 1 teachers are the negatives
        L_cons = KL(Q || P), batchmean,      P = softmax(l, dim=1),  Q = softmax(l, dim=0)^T  (Q not detached)
        L_DCD  = L_con + consistency_weight * L_cons

    In the reference (``distillers/DCD.py``), ``F.kl_div(log_softmax(l, 1), softmax(l, 0).t(), "batchmean")``:
    the column softmax Q is the target. Returned parts: "contrastive" (L_con) and "consistency"
    (consistency_weight * L_cons), summing to the term. No memory bank.

    Options and reference defaults (``distillers/DCD.py``, ``train_student.py``, 2024 tree): feat_dim 128,
    tau_max 10, theta init 1.0 (s starts at e), b init 0, consistency_weight (the reference's alpha) 0.5.
    theta and b are parameters of the term, so they join the optimiser with weight decay, as in the reference.
    CIFAR-100 weights: CE 1 + DCD 1, KD 0 (DCD) or 1 with T = 4 (DCD+KD).

    Behaviour worth knowing:

    - b gets zero gradient (exactly in exact arithmetic; ~1e-8 rounding noise in float): adding a constant to
      every logit changes neither softmax. It is kept (and logged) to match the reference's parameter set.
    - Once exp(theta) reaches tau_max the clamp passes no gradient to theta, which then only decays. The
      scale and bias are logged every epoch, with a warning (once) while the scale sits at the clamp.
    - B = 1 has no negatives: both parts are exactly 0 (a 1 x 1 softmax is 1), so a trailing one-sample
      batch contributes nothing rather than stopping the run. B >= 2 is the meaningful case.

    learnable_temperature False fixes the logits to z_s z_t^T / nce_t (nce_t 0.07, no bias): a temperature
    divides. The reference's non-trainable mode *multiplies* by nce_t (a 0.07 scale, almost flat softmaxes):
    a bug, reproduced only with ``reference_fixed_temperature_bug: true``. Logits are computed in fp32.
    """

    student_features = ("embedding",)
    teacher_features = ("embedding",)

    def __init__(self, feat_dim: int = 128, consistency_weight: float = 0.5, tau_max: float = 10.0,
                 init_theta: float = 1.0, init_bias: float = 0.0, learnable_temperature: bool = True,
                 nce_t: float = 0.07, reference_fixed_temperature_bug: bool = False) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be positive, got {feat_dim}")
        if consistency_weight < 0:
            raise ValueError(f"consistency_weight must be non-negative, got {consistency_weight}")
        if tau_max <= 0:
            raise ValueError(f"tau_max must be positive, got {tau_max}")
        if nce_t <= 0:
            raise ValueError(f"nce_t must be positive, got {nce_t}")
        self.feat_dim, self.consistency_weight, self.tau_max = feat_dim, consistency_weight, tau_max
        self.learnable_temperature, self.nce_t = learnable_temperature, nce_t
        self.reference_fixed_temperature_bug = reference_fixed_temperature_bug
        if learnable_temperature:
            self.theta = nn.Parameter(torch.tensor(float(init_theta)))  # log of the logit scale
            self.bias = nn.Parameter(torch.tensor(float(init_bias)))
        self._warned_clamp = False

    def setup(self, ctx: SetupContext) -> None:
        s_dim, t_dim = _embedding_dims(ctx)
        self.embed_s = Embed(s_dim, self.feat_dim)
        self.embed_t = Embed(t_dim, self.feat_dim)

    def scale(self) -> torch.Tensor:
        """The logit scale s (an inverse temperature)."""
        if self.learnable_temperature:
            return self.theta.exp().clamp(max=self.tau_max)
        if self.reference_fixed_temperature_bug:
            return torch.tensor(self.nce_t)
        return torch.tensor(1.0 / self.nce_t)

    def logits(self, z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        sim = z_s.float() @ z_t.float().t()
        if self.learnable_temperature:
            return sim * self.scale() + self.bias
        return sim * self.scale().item()

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        z_s = self.embed_s(batch.student.features["embedding"])
        z_t = self.embed_t(batch.teacher.features["embedding"])
        logits = self.logits(z_s, z_t)
        target = torch.arange(logits.shape[0], device=logits.device)
        contrastive = F.cross_entropy(logits, target)
        log_p = F.log_softmax(logits, dim=1)
        log_q = F.log_softmax(logits, dim=0).t()
        consistency = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
        return {"contrastive": contrastive, "consistency": self.consistency_weight * consistency}

    def on_epoch_start(self, ctx: EpochContext) -> None:
        if not self.learnable_temperature:
            return
        theta, bias = self.theta.detach().item(), self.bias.detach().item()
        raw = math.exp(theta)
        ctx.log(f"DCD epoch {ctx.epoch}: logit scale {min(raw, self.tau_max):.4f} (theta {theta:.4f}, "
                f"clamp {self.tau_max:g}), bias {bias:.4g}")
        if raw >= self.tau_max:
            message = (f"DCD epoch {ctx.epoch}: the logit scale exp(theta) = {raw:.4f} is at its clamp "
                       f"tau_max = {self.tau_max:g}; theta gets no gradient there (only weight decay moves it)")
            ctx.log(message)
            if not self._warned_clamp:
                warnings.warn(message, stacklevel=2)
                self._warned_clamp = True


RRD_VARIANTS = {  # variant: (tau_s, tau_t, enqueue before the loss)
    "2024": (0.04, 0.1, False),
    "head": (0.1, 0.02, True),
}


@LOSSES.register("rrd", description="RRD: match the teacher's softmax similarities to a queue of teacher embeddings")
class RRD(LossTerm):
    """Relational representation distillation (Giakoumoglou & Stathaki 2024, arXiv 2407.12073).

    Heads ``Embed`` (Linear d -> feat_dim, then L2 normalisation) give z_s and z_t. A FIFO queue Q (K x feat_dim)
    holds past teacher embeddings:

        L = -(1/B) sum_i sum_k softmax(z_t,i Q^T / tau_t)_k * log_softmax(z_s,i Q^T / tau_s)_k

    with the teacher distribution detached, as in the reference (``l_t.detach()``). Since the queue is detached
    too, the teacher head ``embed_t`` gets no gradient at all: it stays a fixed random projection (moved only by
    weight decay, which does not change its normalised output's direction), as in the reference. The batch's
    z_t is written at the pointer, wrapping around the end when B does not divide K (the reference asserts
    K % B == 0 instead), and the pointer advances by B mod K. The queue and pointer are buffers, so they are
    checkpointed. The queue starts as randn(K, feat_dim) normalised column-wise (``dim=0``), as the reference
    does: its rows are not unit length until overwritten by real embeddings.

    Options: queue_size K (reference nce_k 16384; must be at least the batch size), feat_dim 128, and variant:

    - ``"2024"`` (default): tau_s 0.04, tau_t 0.1, enqueue *after* computing the loss: the 2024 code
      (``distillers/RRD.py``), the configuration behind the published CIFAR-100 table.
    - ``"head"``: tau_s 0.1, tau_t 0.02 (sharper teacher), enqueue *before*, so the batch's own teacher
      embeddings (the positives) are in the queue: the later code (``cifar/distillers/RRD.py``).

    tau_s / tau_t override the variant's temperatures. CIFAR-100 weights (``scripts/run_cifar_distill.sh``,
    where the method appears as ``rcd``): CE 1 + RRD 1, KD 0 (RRD) or 1 with T = 4 (RRD+KD). The reference's
    momentum-memory variant is not offered. Similarities are computed in fp32; the queue is written only in
    training mode.
    """

    student_features = ("embedding",)
    teacher_features = ("embedding",)

    def __init__(self, feat_dim: int = 128, queue_size: int = 16384, variant: str = "2024",
                 tau_s: float | None = None, tau_t: float | None = None) -> None:
        super().__init__()
        if variant not in RRD_VARIANTS:
            raise ValueError(f"variant must be one of {sorted(RRD_VARIANTS)}, got {variant!r}")
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be positive, got {feat_dim}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        default_s, default_t, self.enqueue_before = RRD_VARIANTS[variant]
        self.tau_s = default_s if tau_s is None else tau_s
        self.tau_t = default_t if tau_t is None else tau_t
        if self.tau_s <= 0 or self.tau_t <= 0:
            raise ValueError(f"temperatures must be positive, got tau_s={self.tau_s}, tau_t={self.tau_t}")
        self.feat_dim, self.queue_size, self.variant = feat_dim, queue_size, variant

    def setup(self, ctx: SetupContext) -> None:
        s_dim, t_dim = _embedding_dims(ctx)
        self.embed_s = Embed(s_dim, self.feat_dim)
        self.embed_t = Embed(t_dim, self.feat_dim)
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, self.feat_dim), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (B x feat_dim) at the pointer, wrapping around, and advance it. Under DDP the
        global batch's keys are gathered first, so the queue is the same on every rank."""
        keys = comm.gather_cat(keys.detach())
        b, k = keys.shape[0], self.queue_size
        ptr = int(self.queue_ptr)
        rows = (ptr + torch.arange(b, device=self.queue.device)) % k
        self.queue[rows] = keys.detach().to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + b) % k

    def forward(self, batch: Batch) -> torch.Tensor:
        z_s = self.embed_s(batch.student.features["embedding"]).float()
        z_t = self.embed_t(batch.teacher.features["embedding"]).float()
        if z_t.shape[0] * comm.world_size() > self.queue_size:
            raise ValueError(f"RRD: queue_size={self.queue_size} is smaller than the (global) batch size "
                             f"{z_t.shape[0] * comm.world_size()}; the queue must hold at least one batch")
        if self.enqueue_before and self.training:
            self.enqueue(z_t)
        queue = self.queue.detach().clone()
        target = F.softmax(z_t.detach() @ queue.t() / self.tau_t, dim=1)
        log_pred = F.log_softmax(z_s @ queue.t() / self.tau_s, dim=1)
        loss = -(target * log_pred).sum(dim=1).mean()
        if not self.enqueue_before and self.training:
            self.enqueue(z_t)
        return loss


register_method(
    "dcd",
    "DCD: CE + discriminative and consistent distillation (the reference's CIFAR-100 setting, KD 0)",
    {"ce": ("ce", 1.0), "dcd": ("dcd", 1.0)},
    reference="Giakoumoglou & Stathaki 2024 (arXiv 2407.11802); distillers train_student.py --distill dcd -a 0 -b 1",
)
register_method(
    "dcd_kd",
    "DCD+KD: CE + KD (T = 4) + DCD",
    {"ce": ("ce", 1.0), "kd": ("kd", 1.0, {"temperature": 4.0}), "dcd": ("dcd", 1.0)},
    reference="Giakoumoglou & Stathaki 2024 (arXiv 2407.11802); distillers train_student.py --distill dcd -a 1 -b 1",
)
register_method(
    "rrd",
    "RRD: CE + relational distillation against a queue of teacher embeddings (2024 code, KD 0)",
    {"ce": ("ce", 1.0), "rrd": ("rrd", 1.0)},
    reference="Giakoumoglou & Stathaki 2024 (arXiv 2407.12073); distillers scripts/run_cifar_distill.sh -a 0 -b 1",
)
register_method(
    "rrd_kd",
    "RRD+KD: CE + KD (T = 4) + RRD",
    {"ce": ("ce", 1.0), "kd": ("kd", 1.0, {"temperature": 4.0}), "rrd": ("rrd", 1.0)},
    reference="Giakoumoglou & Stathaki 2024 (arXiv 2407.12073); distillers scripts/run_cifar_distill.sh -a 1 -b 1",
)
