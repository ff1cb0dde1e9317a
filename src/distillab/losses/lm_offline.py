"""Offline token-level KD: the teacher's top-k log-probabilities read from the data set, not a live teacher.

The ``teacher_logits`` pipeline step (:mod:`distillab.pipeline_lm`) stores, per token, the teacher's k most
likely tokens' log-probabilities and ids (DistillKit's offline logits). The KL is taken over those k tokens
plus one *tail bucket* holding the rest of the mass on each side:

    KL = sum_{i in top-k} p_i (log p_i - log q_i) + p_tail (log p_tail - log q_tail),
    p_tail = 1 - sum_{i in top-k} p_i,   q_tail = 1 - sum_{i in top-k} q_i,

with q the student's softmax (fp32; its tail from a log-sum-exp over the other tokens, not a difference).
This is the KL between the two distributions coarsened to k + 1 outcomes: at most the full KL, and equal
to it when k is the vocabulary size (the tail is then empty). DistillKit's sparse KL renormalises the
student over the stored ids instead and drops the tail; keeping the tail keeps the value exact at k = V
and the gradient pushes the student's mass off the tokens the teacher did not keep, in total.
"""

from __future__ import annotations

import torch

from distillab.data.base import IGNORE_INDEX
from distillab.losses.base import LOSSES, Batch, LossTerm
from distillab.methods import register_method

TOPK_LOGPROBS, TOPK_IDS = "topk_logprobs", "topk_ids"


def topk_kl_loss(student_logits: torch.Tensor, topk_logprobs: torch.Tensor, topk_ids: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of KL(teacher || student) over the stored top-k tokens plus the tail bucket.

    student_logits (N, L, V); topk_logprobs (N, L, k) the teacher's log-probabilities (any float dtype);
    topk_ids (N, L, k) their token ids; labels (N, L) with IGNORE_INDEX where a position counts nowhere.
    """
    keep = labels != IGNORE_INDEX
    count = keep.sum()
    if not bool(keep.any()):
        return student_logits.sum() * 0.0
    s = student_logits[keep]
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    log_pt = topk_logprobs[keep].to(s.dtype)
    ids = topk_ids[keep].long()
    log_q = torch.log_softmax(s, dim=-1)
    log_qk = log_q.gather(-1, ids)
    kl = (log_pt.exp() * (log_pt - log_qk)).sum(-1)
    # the tails: the teacher's from the stored mass, the student's from the tokens not stored
    p_tail = (1.0 - log_pt.exp().sum(-1)).clamp_min(0.0)
    rest = log_q.scatter(-1, ids, float("-inf"))
    log_q_tail = torch.logsumexp(rest, dim=-1)
    has_tail = (p_tail > 0) & torch.isfinite(log_q_tail)  # k = V: no token left out, no tail on either side
    tail = torch.where(has_tail, p_tail * (torch.log(p_tail.clamp_min(torch.finfo(s.dtype).tiny)) -
                                           torch.where(has_tail, log_q_tail, torch.zeros_like(log_q_tail))),
                       torch.zeros_like(p_tail))
    return (kl + tail).sum() / count


@LOSSES.register("token_kl_topk", description="offline token-level KD: KL over the stored top-k teacher "
                                              "log-probabilities plus a tail bucket (no live teacher)")
class TokenKLTopK(LossTerm):
    """Forward KL (T = 1) to a teacher's stored top-k distribution (module docstring). Reads the batch fields
    ``topk_logprobs`` / ``topk_ids`` of a ``token_blocks`` data set written by the ``teacher_logits`` step;
    needs no teacher model in the run. Temperature is 1: the stored values are the teacher's log-softmax at
    T = 1, and a top-k cut cannot be re-tempered exactly."""

    needs_teacher = False
    tasks = ("lm",)
    input_fields = (TOPK_LOGPROBS, TOPK_IDS)

    def forward(self, batch: Batch) -> torch.Tensor:
        return topk_kl_loss(batch.student.logits, batch.fields[TOPK_LOGPROBS], batch.fields[TOPK_IDS], batch.labels)


register_method(
    "lm_offline",
    "offline token KD: 0.5 CE + 0.5 KL to a teacher's stored top-k log-probabilities (teacher_logits step)",
    {"ce": ("ce", 0.5), "token_kl_topk": ("token_kl_topk", 0.5)},
    reference="DistillKit offline logits (top-k stored per token); weights as lm_fkl (DistillKit's default recipe)",
    paradigm="lm",
)
