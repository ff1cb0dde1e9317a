"""On-policy distillation of language models (GKD): some steps train on sequences the student writes itself.

Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist & Bachem, "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes", ICLR 2024 (arXiv 2306.13649); reference implementation TRL's
``GKDTrainer`` (read at v1.9.0). At every step, with probability ``lmbda``, the batch's continuations are
replaced by the student's own samples (temperature ``gen_temperature``, ``max_new_tokens`` tokens after a
prompt) and the divergence (the generalised JSD of :class:`~distillab.losses.lm.TokenJSD`) is taken on those
sampled tokens only; the teacher scores the same sequences. ``seq_kd``: first replace every batch's
continuation by the *teacher's* samples (TRL's ``seq_kd``; the student's on-policy draw then replaces it in
a fraction ``lmbda`` of the steps).

Our corpora are plain text, not prompt/completion pairs, so the prompt is the first ``prompt_len`` tokens
of each block and the continuation the rest: steps that are not on-policy train on the corpus blocks as
they are (every real token scored), on-policy steps score the generated continuation only.

Defaults are TRL's GKDConfig: lmbda 0.5, beta 0.5, sampling temperature 0.9, loss at T = 1, JSD alone (no
CE). ``max_new_tokens`` (TRL 128) defaults to the block's length minus the prompt, so a generated sequence
is as long as a corpus block. The decision of each step is drawn from the run's step generator (seeded by
the run's seed and the epoch): the same on every rank and on a resumed run. Generation runs the student's
own module under no_grad with its key/value cache, batched; its cost is logged per step as ``train/gen_s``
and the fraction of on-policy steps as ``train/on_policy``.
"""

from __future__ import annotations

import time

import torch

from distillab.core.contract import MAIN_INPUT
from distillab.core.steps import STEPS, StepRunner
from distillab.data.base import IGNORE_INDEX
from distillab.losses.base import LOSSES
from distillab.losses.lm import TokenJSD
from distillab.methods import register_method


@LOSSES.register("gkd", description="GKD: generalised JSD with a fraction lmbda of steps on the student's own "
                                    "samples (step on_policy)")
class GKD(TokenJSD):
    """:class:`TokenJSD` plus the on-policy sampling of GKD (module docstring); the ``on_policy`` step reads
    its options.

    beta / temperature: the JSD's (TRL: 0.5, 1). lmbda: probability that a step trains on the student's
    samples (TRL 0.5). gen_temperature: their sampling temperature (TRL's GKDConfig.temperature, 0.9).
    max_new_tokens: tokens sampled after the prompt (None: the rest of the block). prompt_len: tokens of each
    block kept as the prompt (default 32). top_k: restrict sampling to the k most likely tokens (None: all,
    as TRL). seq_kd: the teacher's samples replace every batch's continuation first (TRL's seq_kd, False).
    """

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, lmbda: float = 0.5, gen_temperature: float = 0.9,
                 max_new_tokens: int | None = None, prompt_len: int = 32, top_k: int | None = None,
                 seq_kd: bool = False) -> None:
        super().__init__(beta, temperature)
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"gkd: lmbda (the fraction of on-policy steps) must be in [0, 1], got {lmbda}")
        if gen_temperature <= 0:
            raise ValueError(f"gkd: gen_temperature must be positive, got {gen_temperature}")
        if prompt_len < 1:
            raise ValueError(f"gkd: prompt_len must be at least 1, got {prompt_len}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"gkd: max_new_tokens must be at least 1, got {max_new_tokens}")
        self.lmbda, self.gen_temperature, self.prompt_len = lmbda, gen_temperature, prompt_len
        self.max_new_tokens, self.top_k, self.seq_kd = max_new_tokens, top_k, seq_kd

    def check_block(self, block: int) -> None:
        """Refuse (ValueError) a prompt that leaves no continuation in blocks of ``block`` tokens; checked with
        the run's plan, before any data is read."""
        if (self.lmbda > 0 or self.seq_kd) and self.prompt_len >= block:
            raise ValueError(f"prompt_len {self.prompt_len} leaves no continuation in blocks of {block} tokens: "
                             f"set method.params.gkd.prompt_len below {block}")


def continuation(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, term: GKD,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s samples after ``prompt`` (N, P) as a training pair: inputs (N, P + new - 1) and labels with
    only the sampled tokens counted (the prompt's positions IGNORE_INDEX)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            seq = model.generate(prompt, new_tokens, temperature=term.gen_temperature, top_k=term.top_k,
                                 generator=generator)
    finally:
        model.train(was_training)
    labels = seq[:, 1:].clone()
    labels[:, : prompt.shape[1] - 1] = IGNORE_INDEX
    return seq[:, :-1], labels


@STEPS.register("on_policy", description="GKD: with probability lmbda, train on the student's own samples")
def on_policy_step(run: StepRunner):
    term = next((t for t in run.objective.terms.values() if isinstance(t, GKD)), None)
    if term is None:
        raise RuntimeError("the on_policy step reads its options from a gkd term: use method gkd (or add a gkd term)")
    on_policy = bool(torch.rand((), generator=run.rng, device=run.rng.device) < term.lmbda)
    if not (on_policy or term.seq_kd):
        total, logs, logits = run.forward(run.trainable)
        run.update(total)
        zero = torch.zeros((), device=total.device)
        return total, {**logs, "on_policy": zero, "gen_s": zero}, logits
    student = run.models[term.roles["student"]].module
    inputs = run.fields[MAIN_INPUT]
    block = inputs.shape[1]
    term.check_block(block)
    new_tokens = term.max_new_tokens or block - term.prompt_len
    prompt = inputs[:, : term.prompt_len]
    tic = time.perf_counter()
    if term.seq_kd:
        teacher = run.models[term.roles["teacher"]].module
        fields, labels = continuation(teacher, prompt, new_tokens, term, run.rng)
        run.replace_batch({MAIN_INPUT: fields}, labels)
    if on_policy:
        fields, labels = continuation(student, prompt, new_tokens, term, run.rng)
        run.replace_batch({MAIN_INPUT: fields}, labels)
    gen_s = time.perf_counter() - tic
    total, logs, logits = run.forward(run.trainable)
    run.update(total)
    device = total.device
    return total, {**logs, "on_policy": torch.tensor(float(on_policy), device=device),
                   "gen_s": torch.tensor(gen_s, device=device)}, logits


register_method(
    "gkd",
    "GKD on-policy: generalised JSD (beta 0.5) alone, half the steps on the student's own samples (T 0.9)",
    {"gkd": ("gkd", 1.0, {"beta": 0.5, "temperature": 1.0, "lmbda": 0.5, "gen_temperature": 0.9})},
    reference="Agarwal et al. 2024 (arXiv 2306.13649); TRL v1.9.0 GKDTrainer and GKDConfig defaults (beta 0.5, "
              "lmbda 0.5, temperature 0.9, seq_kd False, JSD alone)",
    step="on_policy",
    paradigm="lm",
)
