"""Token-level terms for causal language models: forward KL, reverse KL, GKD's generalised JSD, total
variation, hidden-state matching; the lm_fkl, lm_rkl, lm_jsd and lm_tvd presets.

Logits are (N, L, V) (any leading shape works: (..., V) with labels (...)), labels (N, L) with
``IGNORE_INDEX`` (-100) where a position is padding or prompt. Every term reads the real positions only
(the others never enter the graph, whatever their logits) and averages over real tokens across the batch:
sum over real tokens / number of real tokens, not a mean of per-sequence means. Half and bf16 inputs are
computed in fp32; fp64 stays fp64. A batch without real tokens gives a zero that keeps the graph.

Logits must be finite: a -inf logit (a vocabulary entry masked out) makes the divergences NaN, as in the
references (TRL, DistillKit).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillab.data.base import IGNORE_INDEX
from distillab.features import feature_names
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.losses.response import _at_least_fp32
from distillab.methods import register_method

LAST_BLOCK = "stage-1"  # the last entry of a model's feature_info: its last transformer block


def _check_temperature(name: str, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")


def real_token_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student and teacher logits at the real positions, (n, V) in at least fp32, and n as a tensor.

    Selecting first means padding never reaches the graph and costs no softmax over the vocabulary.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{name}: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: both models must predict over the same "
                         "vocabulary (one tokenizer; slice a padded vocabulary to the tokenizer's size)")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"{name}: labels {tuple(labels.shape)} do not match logits {tuple(student_logits.shape)}: "
                         "one label per position, (N, L) for (N, L, V) logits")
    real = labels != IGNORE_INDEX
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    return student_logits[real].to(dtype), teacher_logits[real].to(dtype), real.sum()


def _per_real_token(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total`` / number of real tokens; 0 (with the graph kept) when there are none."""
    return total / count.clamp_min(1)


def _kl_sum(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum over tokens and vocabulary of p (log p - log q) = sum over tokens of KL(p || q)."""
    return (log_p.exp() * (log_p - log_q)).sum()


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits / temperature, dim=-1)


# ---------------------------------------------------------------------------- forward KL


def token_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """T^2 x mean over real tokens of KL(softmax(z_t / T) || softmax(z_s / T))."""
    s, t, n = real_token_logits(student_logits, teacher_logits, labels, "token_kl")
    kl = _kl_sum(_log_probs(t, temperature), _log_probs(s, temperature))
    return _per_real_token(kl, n) * temperature**2


@LOSSES.register("token_kl", description="forward KL(teacher || student) per real token at temperature T, x T^2")
class TokenKL(LossTerm):
    """Token-level forward KL: word-level KD for language models (Hinton, Vinyals & Dean 2015, arXiv
    1503.02531; Kim & Rush 2016, "Sequence-Level Knowledge Distillation", arXiv 1606.07947, section 3.1).

    L = T^2 / n * sum over real tokens of KL(softmax(z_t / T) || softmax(z_s / T)), n = number of real tokens.

    The teacher is the target: the student is pulled to cover every token the teacher gives mass to
    (mode-covering). Kim & Rush's word-level KD is T = 1 (cross-entropy to the teacher's distribution, which
    differs from this KL by the teacher's entropy, a constant). Reference: DistillKit (arcee-ai/DistillKit
    1.0.0, ``distillkit/lossfuncs/kl.py`` ``dense_kl_div`` and ``KLDLoss``) computes the same value: fp32
    log-softmaxes, KL summed over the vocabulary and real tokens, x T^2, / number of real tokens; its default
    recipe is 0.5 CE + 0.5 KL at T = 1 (preset ``lm_fkl``).

    temperature: T, default 1.
    """

    tasks = ("lm",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature("token_kl", temperature)
        self.temperature = temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        return token_kl_loss(batch.student.logits, batch.teacher.logits, batch.labels, self.temperature)


# ---------------------------------------------------------------------------- reverse KL


def token_rkl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """T^2 x mean over real tokens of KL(softmax(z_s / T) || softmax(z_t / T))."""
    s, t, n = real_token_logits(student_logits, teacher_logits, labels, "token_rkl")
    kl = _kl_sum(_log_probs(s, temperature), _log_probs(t, temperature))
    return _per_real_token(kl, n) * temperature**2


@LOSSES.register("token_rkl", description="reverse KL(student || teacher) per real token on fixed sequences, "
                                          "x T^2 (not MiniLLM's policy gradient)")
class TokenReverseKL(LossTerm):
    """Token-level reverse KL on fixed sequences: the divergence MiniLLM minimises (Gu, Dong, Wei & Huang,
    "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024, arXiv 2306.08543), WITHOUT
    MiniLLM's machinery.

    L = T^2 / n * sum over real tokens of sum_k p_s(k) (log p_s(k) - log p_t(k)), p = softmax(z / T).

    The student is the distribution being weighed, so it is pushed onto the teacher's modes and away from
    tokens the teacher finds unlikely (mode-seeking). MiniLLM (code: microsoft/LMOps ``minillm/``) optimises
    the *sequence-level* reverse KL by policy gradient on sequences the student samples (teacher-mixed
    sampling, length normalisation, a language-modelling loss on a pre-training corpus); this term is only
    the closed-form per-token KL on the batch's sequences, what GKD calls reverse KL (TRL's
    ``generalized_jsd_loss`` at beta = 1, which has no T^2; here T^2 scales it as in ``token_kl``, the same
    value at the default T = 1).

    temperature: T, default 1.
    """

    tasks = ("lm",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature("token_rkl", temperature)
        self.temperature = temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        return token_rkl_loss(batch.student.logits, batch.teacher.logits, batch.labels, self.temperature)


# ---------------------------------------------------------------------------- generalised JSD (GKD)


def token_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Mean over real tokens of GKD's generalised JSD as TRL computes it (see :class:`TokenJSD`); no T^2."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"token_jsd: beta must be in [0, 1], got {beta}")
    s, t, n = real_token_logits(student_logits, teacher_logits, labels, "token_jsd")
    log_ps, log_pt = _log_probs(s, temperature), _log_probs(t, temperature)
    if beta == 0.0:
        return _per_real_token(_kl_sum(log_pt, log_ps), n)  # forward KL(p_t || p_s), unscaled
    if beta == 1.0:
        return _per_real_token(_kl_sum(log_ps, log_pt), n)  # reverse KL(p_s || p_t), unscaled
    log_m = torch.logaddexp(log_pt + math.log(beta), log_ps + math.log1p(-beta))  # M = beta p_t + (1 - beta) p_s
    jsd = beta * _kl_sum(log_pt, log_m) + (1.0 - beta) * _kl_sum(log_ps, log_m)
    return _per_real_token(jsd, n)


@LOSSES.register("token_jsd", description="GKD's generalised JSD per real token (TRL's definition: beta 0 forward "
                                          "KL, beta 1 reverse KL)")
class TokenJSD(LossTerm):
    """Generalised Jensen-Shannon divergence of GKD (Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist &
    Bachem, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes", ICLR 2024,
    arXiv 2306.13649), as TRL defines it.

    With p_s, p_t = softmax(z / T) and the probability-space mixture M = beta p_t + (1 - beta) p_s:

        JSD(beta) = beta KL(p_t || M) + (1 - beta) KL(p_s || M)    for 0 < beta < 1,
        JSD(0) = KL(p_t || p_s) (forward KL),  JSD(1) = KL(p_s || p_t) (reverse KL),

    averaged over real tokens. The endpoints are TRL's special cases and are *unscaled*: the formula itself
    vanishes at beta = 0 and 1 (M becomes p_s or p_t) and near them behaves like beta KL(p_t || p_s) and
    (1 - beta) KL(p_s || p_t); so JSD(beta) is not continuous at the endpoints. JSD(0.5) is the ordinary
    JSD, 0 for equal distributions and at most ln 2.

    Reference: TRL ``GKDTrainer.generalized_jsd_loss`` (read at v1.9.0, ``trl/experimental/gkd/gkd_trainer.py``,
    unchanged on main at 1.10.0.dev0): log M by a logsumexp of log p_s + log(1 - beta) and log p_t + log beta;
    the special cases above; masked with labels != -100; "batchmean" = sum / number of real tokens. Its
    temperature divides both logits (no T^2) and defaults to 1, and ``compute_loss`` does not pass
    ``GKDConfig.temperature`` (0.9, a *sampling* temperature), so TRL trains at T = 1. GKDConfig defaults:
    beta 0.5, lmbda 0.5 (the probability of a step on student-generated sequences), seq_kd False; the loss
    is the JSD alone, no CE (preset ``lm_jsd``). Here the log-softmaxes are fp32 for bf16 logits (TRL computes
    in the logits' dtype). Older TRL (about v0.10) used an unnormalised log-linear mixture and swapped weights:
    compare with results of that version with care. The paper's own notation weights the terms the other way
    round; the beta here is TRL's.

    beta: the interpolation weight, in [0, 1], default 0.5 (TRL's). temperature: T, default 1 (TRL's).
    """

    tasks = ("lm",)

    def __init__(self, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"token_jsd: beta must be in [0, 1] (0: forward KL, 1: reverse KL), got {beta}")
        _check_temperature("token_jsd", temperature)
        self.beta, self.temperature = beta, temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        return token_jsd_loss(batch.student.logits, batch.teacher.logits, batch.labels, self.beta, self.temperature)


# ---------------------------------------------------------------------------- total variation


def token_tvd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """T^2 x mean over real tokens of 0.5 sum_k |p_t(k) - p_s(k)|, p = softmax(z / T)."""
    s, t, n = real_token_logits(student_logits, teacher_logits, labels, "token_tvd")
    tvd = 0.5 * (F.softmax(t / temperature, dim=-1) - F.softmax(s / temperature, dim=-1)).abs().sum()
    return _per_real_token(tvd, n) * temperature**2


@LOSSES.register("token_tvd", description="total variation 0.5 sum |p_t - p_s| per real token at temperature T, "
                                          "x T^2 (DistillKit's tvd)")
class TokenTVD(LossTerm):
    """Total variation distance between the teacher's and the student's next-token distributions.

    L = T^2 / n * sum over real tokens of 0.5 sum_k |p_t(k) - p_s(k)|, p = softmax(z / T); in [0, T^2].

    Reference: DistillKit (arcee-ai/DistillKit 1.0.0, ``distillkit/lossfuncs/tvd.py`` ``dense_tvd`` and
    ``TVDLoss``): fp32 softmaxes at temperature T, 0.5 x the L1 distance per token, masked, summed, x T^2 and
    divided by the number of real tokens; the same value here. DistillKit sets no default temperature for it
    (the loss config must give one; its examples use 1 for KL, its README suggests 2 as a first choice) and
    gives no TVD example recipe; preset ``lm_tvd`` uses its default recipe (0.5 CE + 0.5 divergence at T = 1)
    with TVD in place of KL. Unlike KL, TVD is bounded and its gradient does not grow with the log-ratio of
    rare tokens; at p_t = p_s it is not differentiable (the subgradient used is 0).

    temperature: T, default 1.
    """

    tasks = ("lm",)

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature("token_tvd", temperature)
        self.temperature = temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        return token_tvd_loss(batch.student.logits, batch.teacher.logits, batch.labels, self.temperature)


# ---------------------------------------------------------------------------- hidden states


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, labels: torch.Tensor,
                      metric: Literal["mse", "cosine"] = "mse", projection: nn.Module | None = None) -> torch.Tensor:
    """One layer pair, (N, L, d_s) and (N, L, d_t) states; ``projection`` (if given) maps the student's real
    tokens to the teacher's width. ``mse``: mean over real tokens and the d_t features of the squared
    difference; ``cosine``: mean over real tokens of 1 - cos(h_s, h_t)."""
    if student_hidden.shape[:-1] != labels.shape or teacher_hidden.shape[:-1] != labels.shape:
        raise ValueError(f"lm_hidden: states {tuple(student_hidden.shape)} / {tuple(teacher_hidden.shape)} do not "
                         f"match labels {tuple(labels.shape)}: token states are (N, L, d) for (N, L) labels")
    real = labels != IGNORE_INDEX
    h_s, h_t = student_hidden[real], teacher_hidden[real]  # padding is neither projected nor compared
    if projection is not None:
        h_s = projection(h_s)
    h_s, h_t, n = _at_least_fp32(h_s), _at_least_fp32(h_t), real.sum()
    if metric == "mse":
        return _per_real_token((h_s - h_t).pow(2).sum(), n) / h_t.shape[-1]
    return _per_real_token((1.0 - F.cosine_similarity(h_s, h_t, dim=-1)).sum(), n)


@LOSSES.register("lm_hidden", description="hidden-state matching per real token: learned linear projection, "
                                          "MSE or 1 - cosine (TinyBERT)")
class LMHidden(LossTerm):
    """Hidden-state distillation for language models (Jiao et al., "TinyBERT: Distilling BERT for Natural
    Language Understanding", Findings of EMNLP 2020, arXiv 1909.10351, Eq. 8).

    For each pair k of (student feature, teacher feature), with W_k a learned linear map d_s -> d_t:

        mse:    L_k = 1 / (n d_t) * sum over real tokens of ||h_s W_k - h_t||^2     (TinyBERT)
        cosine: L_k = 1 / n * sum over real tokens of (1 - cos(h_s W_k, h_t))
        L = (1 / K) sum_k L_k

    Features are (N, L, d) token states (a transformer block's output), read by name like every feature
    (default ``stage-1`` of both models: their last block). The maps are sized from the probed shapes in
    :meth:`setup`; with several pairs each L_k / K is returned as a part named after the student feature.

    References and where they differ: the TinyBERT paper writes MSE(H_S W_h, H_T) with W_h without bias;
    its code (huawei-noah/Pretrained-Language-Model ``TinyBERT/task_distill.py``) shares one ``fit_dense``
    Linear *with* bias across layers, takes ``MSELoss`` over every position (padding included) and *sums*
    over the mapped layers (4-layer student from 12-layer BERT: teacher layer 3m for student layer m, with the
    embeddings). DistillKit (arcee-ai/DistillKit 1.0.0, ``lossfuncs/hidden_state.py`` ``hs_mse`` / ``hs_cosine``,
    ``hsd_mapping.py``) is the definition used here: one bias-free Linear per pair, Xavier-uniform init,
    masked to real tokens, mean over pairs; it projects only when the widths differ unless
    ``force_hidden_state_projection`` (here: ``project``, default true as in TinyBERT). Features are matched
    as they come out of the block; an HF ``hidden_states`` tuple also holds the embeddings and applies the
    final norm to its last entry, so pick tap addresses accordingly.

    student_layers / teacher_layers: lists of feature names of equal length (pair k: the k-th of each).
    metric: ``mse`` (default, TinyBERT) or ``cosine``. project: a learned map per pair (default); false
    compares the states directly and needs equal widths.
    """

    tasks = ("lm",)

    def __init__(self, student_layers: Sequence[str] = (LAST_BLOCK,), teacher_layers: Sequence[str] = (LAST_BLOCK,),
                 metric: Literal["mse", "cosine"] = "mse", project: bool = True) -> None:
        super().__init__()
        self.student_features = feature_names("lm_hidden", student_layers, option="student_layers")
        self.teacher_features = feature_names("lm_hidden", teacher_layers, option="teacher_layers")
        if len(self.student_features) != len(self.teacher_features):
            raise ValueError(f"lm_hidden: student_layers ({len(self.student_features)}: "
                             f"{list(self.student_features)}) and teacher_layers ({len(self.teacher_features)}: "
                             f"{list(self.teacher_features)}) must pair up one to one")
        if metric not in ("mse", "cosine"):
            raise ValueError(f"lm_hidden: metric must be 'mse' (TinyBERT) or 'cosine', got {metric!r}")
        self.metric, self.project = metric, project
        self.projections = nn.ModuleList()  # one per pair, sized in setup

    def setup(self, ctx: SetupContext) -> None:
        projections = []
        for s_name, t_name in zip(self.student_features, self.teacher_features):
            s, t = ctx.student_shapes[s_name], ctx.teacher_shapes[t_name]
            for who, name, shape in (("student", s_name, s), ("teacher", t_name, t)):
                if len(shape) != 3:
                    raise ValueError(f"lm_hidden: {who} feature {name!r} has shape {tuple(shape)}; token states "
                                     "are (N, L, d): name a transformer block's output")
            if not self.project:
                if s[-1] != t[-1]:
                    raise ValueError(f"lm_hidden: {s_name!r} ({s[-1]} features) and {t_name!r} ({t[-1]}) differ "
                                     "in width: set project: true to learn a map between them")
                projections.append(nn.Identity())
                continue
            linear = nn.Linear(s[-1], t[-1], bias=False)
            nn.init.xavier_uniform_(linear.weight)
            projections.append(linear)
        self.projections = nn.ModuleList(projections)

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        if len(self.projections) != len(self.student_features):
            raise RuntimeError("lm_hidden sizes its projections from the probed shapes: call setup() first")
        parts = {}
        for s_name, t_name, projection in zip(self.student_features, self.teacher_features, self.projections):
            parts[s_name] = hidden_state_loss(batch.student.features[s_name], batch.teacher.features[t_name],
                                              batch.labels, self.metric, projection) / len(self.projections)
        return parts if len(parts) > 1 else next(iter(parts.values()))


# ---------------------------------------------------------------------------- presets

# Weights where a reference gives them: DistillKit's default recipe (0.5 CE + 0.5 divergence, T = 1; its
# trainer divides by the sum of the weights, 1 here); TRL's GKD trains on the JSD alone (no CE).

register_method(
    "lm_fkl",
    "token-level forward KL: 0.5 CE + 0.5 KL(teacher || student) at T = 1 (DistillKit's default recipe)",
    {"ce": ("ce", 0.5), "token_kl": ("token_kl", 0.5, {"temperature": 1.0})},
    reference="Hinton et al. 2015; Kim & Rush 2016 (arXiv 1606.07947) word-level KD; DistillKit 1.0.0 "
              "configuration.py default loss_functions (cross_entropy 0.5, kl 0.5, temperature 1.0)",
    paradigm="lm",
)
register_method(
    "lm_rkl",
    "token-level reverse KL(student || teacher) alone at T = 1 (MiniLLM's divergence, no policy gradient)",
    {"token_rkl": ("token_rkl", 1.0, {"temperature": 1.0})},
    reference="Gu et al. 2024 (arXiv 2306.08543) objective only; divergence-only as GKD's reverse KL (TRL "
              "generalized_jsd_loss at beta 1, no CE)",
    paradigm="lm",
)
register_method(
    "lm_jsd",
    "GKD's generalised JSD alone, beta 0.5, T = 1, on the data's sequences (TRL's loss; no on-policy sampling)",
    {"token_jsd": ("token_jsd", 1.0, {"beta": 0.5, "temperature": 1.0})},
    reference="Agarwal et al. 2024 (arXiv 2306.13649); TRL v1.9.0 GKDTrainer.generalized_jsd_loss, GKDConfig "
              "beta 0.5 (lmbda 0.5 on-policy sampling not part of this preset)",
    paradigm="lm",
)
register_method(
    "lm_tvd",
    "token-level total variation: 0.5 CE + 0.5 TVD at T = 1 (DistillKit's default recipe with its tvd loss)",
    {"ce": ("ce", 0.5), "token_tvd": ("token_tvd", 0.5, {"temperature": 1.0})},
    reference="DistillKit 1.0.0 lossfuncs/tvd.py; weights of its default recipe (cross_entropy 0.5 + divergence "
              "0.5, T 1), no TVD-specific example exists",
    paradigm="lm",
)
