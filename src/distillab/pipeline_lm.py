"""Pipeline data steps for language models: what a teacher writes (sequence-level KD) and what it predicts,
stored once (offline KD). Each writes a ``token_blocks`` data set (:mod:`distillab.data.token_folder`) whose
test split is the corpus's own held-out blocks, so students are scored on real text.

* ``lm_generate`` (Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv 1606.07947): the
  teacher continues the first ``prompt_len`` tokens of every training block (greedy, sampling or beam
  search); the student then trains on prompt + the teacher's continuation with cross-entropy, the
  continuation's tokens counted (``score_prompt``: the prompt's too).
* ``teacher_logits`` (offline logits, as DistillKit stores them): the teacher runs once over the training
  blocks; per token its top-``k`` log-probabilities and their ids are kept (``dtype``: float16 by default, ids
  int16 when the vocabulary allows), the rest of the probability mass is implied (1 minus their sum) and
  the loss ``token_kl_topk`` takes the KL over the k tokens plus that tail bucket: exact when k is the
  vocabulary size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distillab.config import ConfigError
from distillab.core.files import load_checkpoint, save_atomic
from distillab.data.base import IGNORE_INDEX
from distillab.pipeline import PIPELINE_STEPS, DataStep, StepContext

DECODINGS = ("greedy", "sample", "beam")
LOGIT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _teacher_and_data(params: dict, step: str):
    from distillab.data import build_dataset
    from distillab.models import load_model
    from distillab.runner import check_tokenizer

    source = params.get("teacher")
    if not source:
        raise ConfigError(f"{step}: give `teacher`: a run folder (e.g. ${{teacher.run}}), a model file, or "
                          "{config: <its training config>} to find it in the teacher store")
    teacher = load_model(stored_teacher(source, step) if isinstance(source, dict) else source)
    options = {**teacher.data_options, **dict(params.get("data") or {})}  # e.g. {max_bytes: ...}: less text
    bundle = build_dataset(teacher.data, root=teacher.data_root, **options)
    if not bundle.is_tokens:
        raise ConfigError(f"{step}: the teacher was trained on {teacher.data!r}, which is not language modelling")
    check_tokenizer(teacher.tokenizer, teacher.num_classes, bundle, f"{step}: teacher {str(teacher.path)!r}")
    return teacher, bundle


def stored_teacher(source: dict, step: str) -> Path:
    """The teacher store's model for ``{config: ..., overrides: [...], store: ...}`` (as a run's ``teacher.config``
    finds it); a ConfigError naming the closest stored teachers or how to train it."""
    from distillab.config import load_config
    from distillab.plan import find_config
    from distillab.store import TeacherStore

    unknown = set(source) - {"config", "overrides", "store"}
    if "config" not in source or unknown:
        raise ConfigError(f"{step}: teacher as a dict takes config (a training config), overrides and store"
                          f"{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
    overrides = list(source.get("overrides") or [])
    cfg = load_config(find_config(source["config"]), overrides)
    store = TeacherStore(source.get("store"))
    found = store.find(cfg)
    if found is None:
        raise ConfigError(f"{step}: " + store.miss_message(cfg, source["config"], overrides, section="teacher"))
    return found


@torch.no_grad()
def beam_search(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, beams: int) -> torch.Tensor:
    """The highest-scoring continuation (sum of log-probabilities) of each row of ``prompt`` (N, P) among
    ``beams`` hypotheses kept per step: (N, P + new_tokens). No length penalty (every hypothesis has the same
    length); each step runs the model over the whole prefix (no cache: beams reorder it)."""
    n, p = prompt.shape
    seqs = prompt.repeat_interleave(beams, dim=0)  # (N*B, P)
    scores = torch.full((n, beams), float("-inf"), device=prompt.device)
    scores[:, 0] = 0.0  # one live hypothesis per row at the start: the others would duplicate it
    for _ in range(new_tokens):
        logp = F.log_softmax(model(seqs)[:, -1].float(), dim=-1)  # (N*B, V)
        vocab = logp.shape[-1]
        total = (scores.reshape(-1, 1) + logp).reshape(n, beams * vocab)
        scores, flat = total.topk(beams, dim=1)  # (N, B)
        origin = flat // vocab + torch.arange(n, device=prompt.device).unsqueeze(1) * beams
        seqs = torch.cat([seqs[origin.reshape(-1)], (flat % vocab).reshape(-1, 1)], dim=1)
    best = scores.argmax(1) + torch.arange(n, device=prompt.device) * beams
    return seqs[best]


def _continue(model, prompt: torch.Tensor, new_tokens: int, params: dict, generator: torch.Generator):
    decoding = params.get("decoding", "greedy")
    if decoding == "beam":
        return beam_search(model, prompt, new_tokens, int(params.get("beams", 4)))
    return model.generate(prompt, new_tokens, greedy=decoding == "greedy",
                          temperature=float(params.get("temperature", 1.0)), top_k=params.get("top_k"),
                          generator=generator)


def _resumable_batches(folder: Path, total: int, batch: int, work, ctx: StepContext, what: str) -> list:
    """Run ``work(start, stop)`` over ``total`` rows in batches, keeping each batch's result in a checkpoint
    (resumed after an interruption); the results in order."""
    from distillab.engine.progress import WorkProgress

    state_file = folder / "checkpoint.pt"
    state = load_checkpoint(state_file) if state_file.is_file() else {"done": [], "seconds": 0.0}
    starts = list(range(0, total, batch))
    with WorkProgress(len(starts), what, ctx.console) as bar:
        bar.advance(len(state["done"]))
        for i in range(len(state["done"]), len(starts)):
            tic = time.perf_counter()
            state["done"].append(work(starts[i], min(starts[i] + batch, total)))
            state["seconds"] += time.perf_counter() - tic
            save_atomic(state, state_file)
            bar.advance()
    return state["done"], state["seconds"]


def lm_generate_step(params: dict, folder: Path, ctx: StepContext) -> dict[str, Any]:
    """Sequence-level KD data (module docstring): the teacher's continuations of the training blocks' prompts.

    params: ``teacher`` (run folder, model file, or ``{config: ...}`` found in the teacher store), ``prompt_len`` (default 32), ``max_new_tokens`` (default:
    the rest of the block), ``decoding`` (greedy | sample | beam; default greedy, Kim & Rush's beam size 5
    with ``beams``), ``temperature`` / ``top_k`` (sampling), ``score_prompt`` (false: only the teacher's
    tokens count), ``max_blocks`` (at most this many training blocks, the first ones), ``data`` (options
    of the teacher's data set to change, e.g. ``{max_bytes: 1000000}``; the tokenizer must stay), ``batch_size``
    (default 64), ``seed``. Resumable batch by batch. Outputs: ``data``, ``size``, ``tokens``,
    ``seconds_per_token`` (the teacher's generation time per generated token).
    """
    from distillab.data.token_folder import save_token_dataset

    decoding = params.get("decoding", "greedy")
    if decoding not in DECODINGS:
        raise ConfigError(f"lm_generate: decoding must be one of {', '.join(DECODINGS)}, got {decoding!r}")
    teacher, bundle = _teacher_and_data(params, "lm_generate")
    model = teacher.model.eval()
    x_all = bundle.train.inputs
    if params.get("max_blocks"):
        x_all = x_all[: int(params["max_blocks"])]
    block = x_all.shape[1]
    prompt_len = int(params.get("prompt_len", 32))
    new_tokens = int(params.get("max_new_tokens") or block - prompt_len)
    if not 1 <= prompt_len < block or prompt_len + new_tokens > block + 1:
        raise ConfigError(f"lm_generate: prompt_len {prompt_len} + max_new_tokens {new_tokens} must fit blocks of "
                          f"{block} tokens (prompt_len below {block}, their sum at most {block + 1})")
    seed = int(params.get("seed", 0))

    def work(start: int, stop: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)  # each batch its own draw: resumable
        return _continue(model, x_all[start:stop, :prompt_len], new_tokens, params, gen).cpu()

    done, seconds = _resumable_batches(folder, len(x_all), int(params.get("batch_size", 64)), work, ctx,
                                       f"teacher {teacher.arch} writing {len(x_all)} continuations ({decoding})")
    seqs = torch.cat(done)
    inputs, labels = seqs[:, :-1], seqs[:, 1:].clone()
    if not params.get("score_prompt", False):
        labels[:, : prompt_len - 1] = IGNORE_INDEX
    pad = block - inputs.shape[1]
    if pad > 0:  # shorter than a corpus block: padded, never counted
        inputs = F.pad(inputs, (0, pad), value=0)
        labels = F.pad(labels, (0, pad), value=IGNORE_INDEX)
    out = save_token_dataset(folder / "data", inputs, labels, bundle.test.inputs, bundle.test.labels,
                             tokenizer=bundle.tokenizer, token_bytes=bundle.token_bytes,
                             meta={"made_by": "lm_generate", "teacher": str(teacher.path), "params": params,
                                   "source": bundle.name})
    generated = len(seqs) * new_tokens
    ctx.report(f"lm_generate: {len(seqs)} continuations of {new_tokens} tokens by {teacher.arch} ({decoding}) in "
               f"{seconds:.0f} s ({1e3 * seconds / max(generated, 1):.2f} ms per token) -> {out}")
    return {"data": str(out.resolve()), "size": len(seqs), "tokens": generated,
            "seconds_per_token": seconds / max(generated, 1)}


def topk_logprobs(logits: torch.Tensor, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` log-probabilities (N, L, k) in ``dtype`` and their token ids (int16 when they fit)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    id_dtype = torch.int16 if logits.shape[-1] <= torch.iinfo(torch.int16).max + 1 else torch.int32
    return values.to(dtype), ids.to(id_dtype)


def teacher_logits_step(params: dict, folder: Path, ctx: StepContext) -> dict[str, Any]:
    """Offline teacher outputs (module docstring): the corpus's blocks with the teacher's top-k
    log-probabilities per token, as the fields ``topk_logprobs`` and ``topk_ids``.

    params: ``teacher``, ``k`` (default 32; the vocabulary size: exact), ``dtype`` (float16 | bfloat16 |
    float32), ``data`` (as for ``lm_generate``), ``batch_size`` (default 64). Resumable. Outputs: ``data``, ``tokens``, ``bytes_per_token`` (what
    the stored teacher outputs cost per training token), ``seconds``.
    """
    from distillab.data.token_folder import save_token_dataset

    teacher, bundle = _teacher_and_data(params, "teacher_logits")
    vocab = bundle.num_classes
    k = int(params.get("k", 32))
    if not 1 <= k <= vocab:
        raise ConfigError(f"teacher_logits: k must lie in 1..{vocab} (the vocabulary), got {k}")
    dtype_name = params.get("dtype", "float16")
    if dtype_name not in LOGIT_DTYPES:
        raise ConfigError(f"teacher_logits: dtype must be one of {', '.join(LOGIT_DTYPES)}, got {dtype_name!r}")
    dtype = LOGIT_DTYPES[dtype_name]
    model = teacher.model.eval()
    batch = int(params.get("batch_size", 64))
    splits = {"train": bundle.train.inputs, "test": bundle.test.inputs}
    results = {}
    seconds = 0.0
    for split, x in splits.items():
        sub = folder / split
        sub.mkdir(parents=True, exist_ok=True)

        def work(start: int, stop: int, x: torch.Tensor = x) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                return topk_logprobs(model(x[start:stop]), k, dtype)

        done, s = _resumable_batches(sub, len(x), batch, work, ctx, f"teacher {teacher.arch}: top-{k} of {split}")
        seconds += s
        results[split] = (torch.cat([d[0] for d in done]), torch.cat([d[1] for d in done]))
    fields = {"topk_logprobs": (results["train"][0], results["test"][0]),
              "topk_ids": (results["train"][1], results["test"][1])}
    out = save_token_dataset(folder / "data", bundle.train.inputs, bundle.train.labels, bundle.test.inputs,
                             bundle.test.labels, tokenizer=bundle.tokenizer, token_bytes=bundle.token_bytes,
                             fields=fields, meta={"made_by": "teacher_logits", "teacher": str(teacher.path),
                                                  "params": params, "source": bundle.name})
    tokens = int(bundle.train.inputs.numel())
    per_token = k * (results["train"][0].element_size() + results["train"][1].element_size())
    ctx.report(f"teacher_logits: top-{k} of {vocab} per token ({dtype_name} values, "
               f"{str(results['train'][1].dtype).removeprefix('torch.')} ids): {per_token} bytes per token, "
               f"{tokens * per_token / 2**20:.1f} MiB for {tokens} training tokens, in {seconds:.0f} s -> {out}")
    return {"data": str(out.resolve()), "tokens": tokens, "bytes_per_token": per_token, "seconds": seconds}


PIPELINE_STEPS.register("lm_generate", description="sequence-level KD: the teacher's continuations as a data set")(
    DataStep(lm_generate_step, ("data", "size", "tokens", "seconds_per_token"),
             "sequence-level KD: the teacher's continuations as a data set"))
PIPELINE_STEPS.register("teacher_logits", description="offline KD: the teacher's top-k log-probabilities stored")(
    DataStep(teacher_logits_step, ("data", "tokens", "bytes_per_token", "seconds"),
             "offline KD: the teacher's top-k log-probabilities stored"))
