"""Exact-match accuracy of a language model's final answers on arith problems (:mod:`distillab.data.arith`).

The model writes greedily after each prompt (batched: prompts left-padded, with an attention mask, through the
model's ``generate`` and its key/value cache) until EOS; the answer is what follows the ``>`` marker (format
"trace") or the whole continuation (format "answer"), and counts only if it equals the true answer exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from distillab.data.arith import EOS_ID, PAD_ID, Problem, decode, final_answer


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of any lengths as ids (N, L), padded on the left, and their attention mask (1: token, 0: pad)."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, p in enumerate(prompts):
        if len(p):
            ids[row, length - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[row, length - len(p):] = 1
    return ids, mask


@torch.no_grad()
def complete(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, batch_size: int = 256,
             eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> list[list[int]]:
    """The greedy continuation of every prompt: the new ids up to and including ``eos_id`` (all
    ``max_new_tokens`` of them when it never comes). The model runs in eval mode on its own device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batches of like lengths pad less
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = left_pad([prompts[i] for i in rows], pad_id)
            generated = model.generate(ids.to(device), max_new_tokens, greedy=True,
                                       attention_mask=mask.to(device), eos_id=eos_id)[:, ids.shape[1]:]
            for i, new in zip(rows, generated.tolist()):
                out[i] = new[: new.index(eos_id) + 1] if eos_id in new else new
    finally:
        model.train(was_training)
    return out


def longest_output(problems: Sequence[Problem], format: str) -> int:
    """Tokens a correct output takes after the longest prompt's ``=``, EOS included: generating more can only
    lengthen wrong answers."""
    return max(len(p.text(format)) - len(p.prompt) for p in problems)


def model_answers(model: nn.Module, problems: Sequence[Problem], *, format: str = "trace",
                  max_new_tokens: int | None = None, batch_size: int = 256) -> list[str | None]:
    """The final answer the model writes for each problem (None where it writes none)."""
    new_tokens = longest_output(problems, format) if max_new_tokens is None else max_new_tokens
    continuations = complete(model, [p.prompt_ids() for p in problems], new_tokens, batch_size=batch_size)
    return [final_answer(decode(c), format) for c in continuations]


def exact_match(model: nn.Module, problems: Sequence[Problem], *, format: str = "trace",
                max_new_tokens: int | None = None, batch_size: int = 256) -> float:
    """% of ``problems`` whose final answer, greedily generated, equals the true answer.

    format: how the model was trained to write ("trace": work, then ``>`` and the answer; "answer": the
    answer right away). max_new_tokens: None, the longest correct output (:func:`longest_output`).
    """
    if not problems:
        raise ValueError("exact_match needs at least one problem")
    answers = model_answers(model, problems, format=format, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return 100.0 * sum(a == p.answer for a, p in zip(answers, problems)) / len(problems)
