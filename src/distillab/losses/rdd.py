"""RDD: representational difference distillation, CRD's contrastive loss steered by RDX affinities.

RDX (:mod:`distillab.rdx`) compares the teacher's and the student's pooled embeddings over the training
set and gives, per sample i: its strongest teacher-unique neighbour (argmax of A01, the positive), a pool
of the samples the student wrongly merges with it (top-K of A10, the negatives) and a confusion score c_i.
The table is mined before the first epoch (``start_epoch``), then every ``refresh_every`` epochs, or
adaptively when the confusion distribution of a probe subset has drifted. At ImageNet scale the pools
are not kept as a table but mined per batch (``pool_storage``).
"""

from __future__ import annotations

import time
from typing import Literal

import torch

from distillab.core import dist as comm
from distillab.losses.base import LOSSES, Batch, EpochContext, LossTerm, SetupContext
from distillab.losses.common import Embed
from distillab.losses.memory import ContrastMemory, nce_per_anchor
from distillab.losses.sampling import ContrastSampler
from distillab.methods import register_method
from distillab.rdx.affinity import rdx_affinities
from distillab.rdx.mining import (ANCHOR_SEED_DEFAULT, anchor_columns, anchor_features, mine, mine_abs_max, mine_rows,
                                  select_anchors)

POOL_STORAGES = ("table", "on_the_fly", "auto")
TABLE_LIMIT_BYTES = 2 ** 30  # pool_storage "auto": the (N, pool_k) int64 table up to 1 GiB, on the fly above


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs (in [0, 1])."""
    a, b = a.flatten().float().sort().values, b.flatten().float().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).float() / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True).float() / len(b)
    return float((cdf_a - cdf_b).abs().max())


def probe_confusion(x_teacher: torch.Tensor, x_student: torch.Tensor, gamma: float | str, beta: float,
                    mode: str) -> torch.Tensor:
    """c_i = mean over j != i of (A01_ij + A10_ij) within a probe subset (full matrices: small sets only)."""
    a01, a10 = rdx_affinities(x_teacher, x_student, gamma=gamma, beta=beta, mode=mode)
    n = a01.shape[0]
    total = a01 + a10
    return (total.sum(1) - total.diagonal()) / max(n - 1, 1)


def _to_half(x: torch.Tensor, side: str) -> torch.Tensor:
    """``x`` rounded to float16 (how the on-the-fly pool storage keeps the mined embeddings)."""
    half = x.detach().to(torch.float16)
    if not bool(torch.isfinite(half).all()):
        raise ValueError(f"the {side} embeddings exceed float16's range (|x| > 65504), which the on-the-fly "
                         "pool storage keeps them in: use pool_storage 'table'")
    return half


@LOSSES.register("rdd", description="RDD: CRD's NCE with RDX-chosen positives and negatives, weighted by confusion")
class RDD(LossTerm):
    """Representational Difference Distillation (Irakiza & Mugisha, blog "Representational Difference
    Distillation", seed 000; code: abdulkarim-mugisha/RepDistiller ``distiller_zoo/RDXContrast.py``,
    ``rdx/sampling.py``, ``train_student.py``).

    Mining (RDX, Kondapaneni et al. 2025, on the pooled, raw embeddings of the whole training set, eval
    mode, test-time transforms; model 0 = teacher, model 1 = student):
    r = per-row neighbour ranks, Delta10 = tanh(gamma (r_S - r_T) / (min(r_S, r_T) + 1)),
    A01 = exp(beta Delta10) (teacher-unique), A10 = exp(-beta Delta10) (student-unique),
    positive_i = argmax_{j != i} A01_ij, pool_i = top-``pool_k`` j != i by A10_ij,
    c_i = mean_{j != i} (A01_ij + A10_ij).

    Loss, per batch (CRD's memory banks and NCE, :mod:`distillab.losses.memory`): contrast indices
    [positive_i, K negatives drawn with replacement from pool_i]; the student anchor v_s,i is scored
    against the teacher bank; L = (1/B) sum_i w_i NCE_i with w_i = c_i / mean_batch(c). Both banks are
    updated as in CRD; only the student-anchor term enters the loss, as in the reference.

    Options and defaults (the authors' code unless said): feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5
    (CRD's); gamma 0.1 (``"auto"``: 80 / N, RDX's fallback), beta 5 (the blog writes 0.8, most likely the
    loss weight: ``beta=0.8`` gives the blog's reading), mode ``"local"`` (RDX's ``"standard"`` as option),
    pool_k min(1024, nce_k), kna_k 8, anchors None (all N; an int ranks against that many random anchors,
    seed 42 as rdx_anchor_n), start_epoch 1 (mined before epoch 1, on the untrained student),
    refresh_every 0 (mine once; the README example uses 20).

    Pool storage (``pool_storage``; not in the reference, which holds the table): ``"table"`` keeps the
    (N, pool_k) int64 pools from each mining (10 GB for ImageNet's N = 1.28 million and pool_k = 1024);
    ``"on_the_fly"`` keeps instead the mined embeddings of both models in float16 (N (d_t + d_s) 2 bytes,
    buffers, so a resumed run has them) and mines each batch's pools from them when the batch comes
    (:func:`~distillab.rdx.mining.mine_rows`, B x M ranks: use ``anchors``); ``"auto"`` (default): the
    table while it is at most 1 GiB (N pool_k 8 bytes), on the fly above. On the fly, the whole mining
    (positives, confusion, pools) is made from the float16-rounded embeddings, so it gives the contrast
    indices the table would give for those embeddings (the same draws from the same pools; tested).

    Under DistributedDataParallel (torchrun), every rank holds the same tables and draws the negatives
    of the whole global batch from the same generator state, then keeps its own rows; the weights are
    normalised by the mean confusion over the global batch; each rank mines its
    :func:`~distillab.core.dist.shard_range` of the rows and the results are gathered (standard mode's
    max |R1 - R0| all-reduced first). The result equals a single process with the global batch.

    Where we differ, and why (see docs/rdd.md):

    - ``weighting="confusion"`` (default) applies w_i per anchor as the blog describes. In the authors'
      code the weights broadcast against scores of shape [B, K+1, 1] and cancel (the loss equals the
      unweighted one to ~1e-8); ``weighting="reference"`` reproduces that (unweighted) loss.
    - ``keep_self_positive=True`` keeps CRD's own-index positive instead of the A01 positive (not in
      the code; an ablation).
    - ``negatives="crd"`` draws the negatives as CRD does (uniformly from the samples of other classes)
      instead of from the A10 pool, keeping the A01 positive and the weights (not in the code; an ablation).
    - ``weighted_negatives=True`` is the blog's "weights negatives by A10" reading: negatives drawn from
      the pool with probability proportional to A10 (the mining's own A10 of each pool member) instead of
      uniformly; off by default (the code selects).
    - ``adaptive=True`` is the refresh the blog left open: every epoch the confusion of a fixed probe
      subset (``probe_size`` samples) is recomputed with the current student and compared with its value
      at the last mining by the Kolmogorov-Smirnov statistic; above ``drift_threshold`` the table is
      re-mined. Every mining and its trigger goes to the run's events.log.
    - Before the first mining (``start_epoch`` > 1) the term behaves as CRD's student-anchor term with
      "exact" sampling.
    - The teacher head gets no gradient (only the student-anchor term is used), as in the reference: it
      stays at its initialisation and the teacher bank is filled through it.
    """

    student_features = ("embedding",)
    teacher_features = ("embedding",)

    def __init__(self, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5,
                 gamma: float | str = 0.1, beta: float = 5.0, mode: Literal["local", "standard"] = "local",
                 pool_k: int = 1024, kna_k: int = 8, anchors: int | None = None, start_epoch: int = 1,
                 refresh_every: int = 0, adaptive: bool = False, probe_size: int = 1000,
                 drift_threshold: float = 0.2, keep_self_positive: bool = False,
                 weighting: Literal["confusion", "reference"] = "confusion", weighted_negatives: bool = False,
                 negatives: Literal["a10", "crd"] = "a10",
                 pool_storage: Literal["table", "on_the_fly", "auto"] = "auto", block: int = 512,
                 seed: int = 0) -> None:
        super().__init__()
        if nce_k < 1 or pool_k < 1 or feat_dim < 1:
            raise ValueError("nce_k, pool_k and feat_dim must be positive")
        if weighting not in ("confusion", "reference"):
            raise ValueError(f"weighting must be 'confusion' or 'reference', got {weighting!r}")
        if negatives not in ("a10", "crd"):
            raise ValueError(f"negatives must be 'a10' (the pool) or 'crd' (CRD's draws), got {negatives!r}")
        if negatives == "crd" and weighted_negatives:
            raise ValueError("weighted_negatives weights the A10 pool's members: it needs negatives='a10'")
        if mode not in ("local", "standard"):
            raise ValueError(f"mode must be 'local' or 'standard', got {mode!r}")
        if pool_storage not in POOL_STORAGES:
            raise ValueError(f"pool_storage must be one of {POOL_STORAGES}, got {pool_storage!r}")
        if start_epoch < 1 or refresh_every < 0:
            raise ValueError("start_epoch must be >= 1 and refresh_every >= 0")
        if not 0.0 < drift_threshold <= 1.0:
            raise ValueError(f"drift_threshold is a KS statistic in (0, 1], got {drift_threshold}")
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.gamma, self.beta, self.mode = gamma, beta, mode
        self.pool_k, self.kna_k, self.anchors = min(pool_k, nce_k), kna_k, anchors
        self.start_epoch, self.refresh_every = start_epoch, refresh_every
        self.adaptive, self.probe_size, self.drift_threshold = adaptive, probe_size, drift_threshold
        self.keep_self_positive, self.weighting, self.weighted_negatives = keep_self_positive, weighting, weighted_negatives
        self.negatives = negatives
        self.pool_storage, self.block, self.seed = pool_storage, block, seed
        self.on_the_fly = False  # resolved in setup (pool_storage "auto" depends on N)
        self._teacher_cache: torch.Tensor | None = None  # teacher embeddings never change: extracted once
        self._anchor_cache: tuple | None = None  # the anchors' float32 features, for the on-the-fly pools

    def setup(self, ctx: SetupContext) -> None:
        n = ctx.num_train
        self.num_data = n
        d_s, d_t = ctx.student_shapes["embedding"][1:].numel(), ctx.teacher_shapes["embedding"][1:].numel()
        self.embed_s = Embed(d_s, self.feat_dim)
        self.embed_t = Embed(d_t, self.feat_dim)
        self.memory = ContrastMemory(n, self.feat_dim, self.nce_t, self.nce_m)
        self.fallback = ContrastSampler(n, ctx.train_labels, self.nce_k, "exact", self.seed)
        self.fallback.num_negatives = min(self.nce_k, self.fallback.max_distinct_negatives)
        # the anchors (the same every mining: mine's seed 42); a pool holds at most M - 1 of them
        anchor_index = select_anchors(n, self.anchors, ANCHOR_SEED_DEFAULT)
        m = n if anchor_index is None else len(anchor_index)
        self.pool_k = min(self.pool_k, n - 1, m - 1)
        self.register_buffer("anchor_index", torch.zeros(0, dtype=torch.long) if anchor_index is None
                             else anchor_index, persistent=False)  # empty: all N samples
        if self.pool_storage == "auto":
            self.on_the_fly = n * self.pool_k * 8 > TABLE_LIMIT_BYTES
        else:
            self.on_the_fly = self.pool_storage == "on_the_fly"
        self.register_buffer("positive", torch.arange(n))
        if self.on_the_fly:  # the mined embeddings instead of the pools
            self.register_buffer("mined_teacher", torch.zeros(n, d_t, dtype=torch.float16))
            self.register_buffer("mined_student", torch.zeros(n, d_s, dtype=torch.float16))
            self.register_buffer("abs_max", torch.tensor(0.0))  # mode "standard": the mining's max |R1 - R0|
        else:
            self.register_buffer("pool", torch.zeros(n, self.pool_k, dtype=torch.long))
            if self.weighted_negatives:
                self.register_buffer("pool_affinity", torch.ones(n, self.pool_k))
        self.register_buffer("confusion", torch.ones(n))
        self.register_buffer("kna", torch.zeros(n))
        self.register_buffer("mined_epoch", torch.tensor(0))  # 0: not mined yet
        gen = torch.Generator().manual_seed(self.seed + 1)
        self.register_buffer("probe", torch.randperm(n, generator=gen)[:min(self.probe_size, n)])
        self.register_buffer("probe_reference", torch.zeros(len(self.probe)))
        self.register_buffer("draw_state", torch.Generator().manual_seed(self.seed + 2).get_state())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self._anchor_cache = None  # new mined embeddings
        if not hasattr(self, "pool_affinity"):  # checkpoints that kept an unused pool_affinity table
            state_dict.pop(prefix + "pool_affinity", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- mining

    def _teacher_embeddings(self, ctx: EpochContext) -> torch.Tensor:
        if self.on_the_fly:  # float16, rounded once: the buffer is the cache once mined
            if int(self.mined_epoch) > 0:
                return self.mined_teacher
            return _to_half(ctx.extract("teacher", ["embedding"])["embedding"].flatten(1), "teacher")
        if self._teacher_cache is None or self._teacher_cache.device != ctx.device:
            self._teacher_cache = ctx.extract("teacher", ["embedding"])["embedding"].flatten(1)
        return self._teacher_cache

    def refresh_reason(self, epoch: int, drift: float | None) -> str | None:
        """Why the table should be (re-)mined before ``epoch``, or None."""
        mined = int(self.mined_epoch)
        if epoch < self.start_epoch:
            return None
        if mined == 0:
            return f"first mining (start_epoch {self.start_epoch})"
        if self.refresh_every and epoch > mined and (epoch - self.start_epoch) % self.refresh_every == 0:
            return f"scheduled refresh (every {self.refresh_every} epochs)"
        if drift is not None and drift > self.drift_threshold and epoch > mined:
            return f"adaptive refresh: probe confusion drift {drift:.3f} > {self.drift_threshold}"
        return None

    @torch.no_grad()
    def on_epoch_start(self, ctx: EpochContext) -> None:
        drift = None
        if self.adaptive and int(self.mined_epoch) > 0 and ctx.epoch > int(self.mined_epoch):
            teacher = self._teacher_embeddings(ctx)[self.probe.to(ctx.device)]
            student = ctx.extract("student", ["embedding"], self.probe)["embedding"].flatten(1)
            now = probe_confusion(teacher, student, self.gamma, self.beta, self.mode)
            drift = ks_statistic(self.probe_reference, now)
            ctx.log(f"RDD probe drift {drift:.3f} (threshold {self.drift_threshold})")
        reason = self.refresh_reason(ctx.epoch, drift)
        if reason is not None:
            self.mine_table(ctx, reason)

    @torch.no_grad()
    def mine_table(self, ctx: EpochContext, reason: str) -> None:
        """Mine positives, confusion, KNA (and, stored as a table, the pools) of the whole training set.

        Each rank mines its share of the rows (all of them in a single process) and the shares are
        gathered, so every rank ends with the same buffers."""
        tic = time.perf_counter()
        teacher = self._teacher_embeddings(ctx)
        student = ctx.extract("student", ["embedding"])["embedding"].flatten(1)
        mined_student = _to_half(student, "student") if self.on_the_fly else student
        rows = comm.shard_range(len(student))
        options = dict(anchors=self.anchors, seed=ANCHOR_SEED_DEFAULT, block=self.block, rows=rows)
        abs_max = None
        if self.mode == "standard":  # the global max |R1 - R0| over every rank's rows
            abs_max = comm.all_reduce_(mine_abs_max(teacher, mined_student, **options), "max")
        table = not self.on_the_fly
        result = mine(teacher, mined_student, gamma=self.gamma, beta=self.beta, mode=self.mode, pool_k=self.pool_k,
                      kna_k=self.kna_k, need_pool=table, pool_affinity=table and self.weighted_negatives,
                      abs_max=abs_max, **options)
        device = self.positive.device
        self.positive.copy_(comm.gather_varsize(result.positive).to(device))
        self.confusion.copy_(comm.gather_varsize(result.confusion).to(device))
        self.kna.copy_(comm.gather_varsize(result.kna).to(device))
        if table:
            self.pool.copy_(comm.gather_varsize(result.negative_pool).to(device))
            if self.weighted_negatives:
                self.pool_affinity.copy_(comm.gather_varsize(result.pool_affinity).to(device))
        else:
            if teacher is not self.mined_teacher:
                self.mined_teacher.copy_(teacher.to(device))
            self.mined_student.copy_(mined_student.to(device))
            self.abs_max.fill_(0.0 if abs_max is None else float(abs_max))
            self._anchor_cache = None
        probe = self.probe.to(teacher.device)
        self.probe_reference.copy_(probe_confusion(teacher[probe], student[probe], self.gamma, self.beta,
                                                   self.mode).to(device))
        self.mined_epoch.fill_(ctx.epoch)
        ctx.log(f"RDX mining before epoch {ctx.epoch} ({reason}): N={len(student)}, gamma={result.gamma:g}, "
                f"beta={result.beta:g}, mean confusion {float(self.confusion.mean()):.3f}, "
                f"pools {'on the fly' if self.on_the_fly else 'table'}, {time.perf_counter() - tic:.1f} s")

    # ---------------------------------------------------------------- pools on the fly

    def _anchor_side(self) -> tuple:
        """(at, as_, at_sq, as_sq, anchor_index or None) from the mined embeddings, cached until the next mining."""
        device = self.mined_teacher.device
        if self._anchor_cache is None or self._anchor_cache[0].device != device:
            anchor_index = self.anchor_index if len(self.anchor_index) else None
            self._anchor_cache = (*anchor_features(self.mined_teacher, self.mined_student, anchor_index),
                                  anchor_index)
        return self._anchor_cache

    @torch.no_grad()
    def pools_on_the_fly(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pools (B, pool_k) of the samples ``index``, mined now from the stored embeddings, and with
        ``weighted_negatives`` their members' A10 (else None): the rows the table would hold."""
        at, as_, at_sq, as_sq, anchor_index = self._anchor_side()
        rows = index.to(self.mined_teacher.device, torch.long)
        out = mine_rows(self.mined_teacher[rows].float(), self.mined_student[rows].float(),
                        anchor_columns(rows, anchor_index), at, as_, at_sq, as_sq, anchor_index, gamma=self.gamma,
                        beta=self.beta, mode=self.mode, abs_max=self.abs_max if self.mode == "standard" else None,
                        pool_k=self.pool_k, kna_k=self.kna_k, pool_affinity=self.weighted_negatives)
        return out.pool.to(index.device), out.pool_affinity

    # ---------------------------------------------------------------- loss

    def contrast_indices(self, index: torch.Tensor) -> torch.Tensor:
        """(B, K + 1): the positive, then K negatives drawn with replacement from each anchor's pool.

        The draws are made for the whole global batch (all ranks' ``index``, gathered) from the shared
        generator state, and this rank's rows are returned: the same indices as one process would draw."""
        global_index = comm.gather_cat(index)
        here = comm.local_slice(len(global_index))
        if int(self.mined_epoch) == 0:
            return self.fallback(global_index)[here]
        if self.negatives == "crd":  # CRD's negatives around the mined positive
            drawn = self.fallback(global_index)[here].to(index.device)
            positive = index if self.keep_self_positive else self.positive[index]
            return torch.cat([positive.unsqueeze(1), drawn[:, 1:]], dim=1)
        gen = torch.Generator()  # CPU generator whose state is a buffer: resume draws the same negatives
        gen.set_state(self.draw_state.cpu())
        if self.on_the_fly:  # this rank's rows only; the draws below are the global batch's
            pool, affinity = self.pools_on_the_fly(index)
            probs = comm.gather_cat(affinity).cpu() if self.weighted_negatives else None
        else:
            pool = self.pool[index]
            probs = self.pool_affinity[global_index].cpu() if self.weighted_negatives else None
        if self.weighted_negatives:
            cols = torch.multinomial(probs, self.nce_k, replacement=True, generator=gen)
        else:
            cols = torch.randint(0, pool.shape[1], (len(global_index), self.nce_k), generator=gen)
        self.draw_state.copy_(gen.get_state())
        cols = cols[here].to(index.device)
        positive = index if self.keep_self_positive else self.positive[index]
        return torch.cat([positive.unsqueeze(1), pool.gather(1, cols)], dim=1)

    def anchor_weights(self, index: torch.Tensor) -> torch.Tensor:
        """w_i = c_i / mean over the (global) batch of c (all ones with ``weighting="reference"``)."""
        if self.weighting == "reference":
            return torch.ones(len(index), device=index.device)
        return self.confusion[index] / self.confusion[comm.gather_cat(index)].mean()

    def forward(self, batch: Batch) -> torch.Tensor:
        v_s = self.embed_s(batch.student.features["embedding"])
        v_t = self.embed_t(batch.teacher.features["embedding"])
        log_p = self.memory(v_s, v_t, batch.index, self.contrast_indices(batch.index), anchors=("student",))
        per_anchor = nce_per_anchor(log_p["student"], self.num_data)
        return (per_anchor * self.anchor_weights(batch.index)).mean()


_RDD_REF = "RDD blog (seed 000); abdulkarim-mugisha/RepDistiller distiller_zoo/RDXContrast.py, train_student.py"
register_method("rdd", "RDD: CE + 0.8 RDX-guided contrastive term (the authors' code preset, KD 0)",
                {"ce": ("ce", 1.0), "rdd": ("rdd", 0.8)}, reference=_RDD_REF)
register_method("rdd_kd", "RDD+KD: CE + KD (T = 4) + 0.8 RDD (the authors' code preset)",
                {"ce": ("ce", 1.0), "kd": ("kd", 1.0, {"temperature": 4.0}), "rdd": ("rdd", 0.8)},
                reference=_RDD_REF)
register_method("rdd_blog", "RDD as the blog writes the objective: 1.0 CE + 0.9 KD + 0.8 RDD",
                {"ce": ("ce", 1.0), "kd": ("kd", 0.9, {"temperature": 4.0}), "rdd": ("rdd", 0.8)},
                reference=_RDD_REF)
register_method("rdd_sampling", "RDD sampling (blog variant): KD on the easiest half by RDX difficulty, re-ranked every 20",
                {"ce": ("ce", 0.1), "kd": ("kd", 0.9, {"temperature": 4.0})}, reference=_RDD_REF,
                schedule=("rdd_sampling", {}))
register_method("rdd_curriculum", "RDD curriculum (blog variant): KD, easiest 30 % first, linear to all over 100 epochs",
                {"ce": ("ce", 0.1), "kd": ("kd", 0.9, {"temperature": 4.0})}, reference=_RDD_REF,
                schedule=("rdd_curriculum", {}))
