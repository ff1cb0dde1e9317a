"""A language-modelling data set kept as token blocks in a folder: what a teacher wrote, or read once.

:func:`save_token_dataset` writes a folder; the registered data set ``token_blocks`` reads it
(``data.name=token_blocks data.options.path=<folder>``). Pipelines write them: ``lm_generate`` (the
teacher's continuations of the training prompts: sequence-level KD) and ``teacher_logits`` (the corpus
with the teacher's top-k log-probabilities per token: offline KD). The folder holds two files, each
written atomically:

- ``data.pt``: ``train_x``, ``train_y``, ``test_x``, ``test_y`` ((N, L) token ids and next-token labels,
  IGNORE_INDEX where a position counts nowhere), ``token_bytes`` (V,), and extra per-token fields of the
  training samples (``train_<field>``, e.g. ``topk_ids`` (N, L, k)) with their test counterparts;
- ``meta.json``: format and version, the tokenizer record, block length, sizes, field shapes, the SHA-256 of
  ``data.pt`` (a folder whose two files come from different writes is refused) and the caller's ``meta``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from distillab.core.errors import DataError
from distillab.core.files import write_json_atomic
from distillab.data.base import DATASETS, IGNORE_INDEX, ArrayDataset, DataBundle, InputField, read_json_file
from distillab.data.tensor_folder import META_FILE, load_payload, write_payload

FORMAT = "distillab.token_blocks"
VERSION = 1


def save_token_dataset(folder: str | Path, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                       test_y: torch.Tensor, *, tokenizer: dict, token_bytes: torch.Tensor,
                       fields: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                       meta: dict[str, Any] | None = None) -> Path:
    """Write token blocks to ``folder`` for the data set ``token_blocks``; return the folder.

    train_x / test_x: (N, L) token ids; train_y / test_y: (N, L) next-token labels (IGNORE_INDEX: counts
    nowhere). tokenizer: the record of what made the ids (checked against models' records when read).
    fields: name -> (train values, test values), each (N, L, ...) per token, kept in their dtype.
    """
    vocab = int(tokenizer["vocab_size"])
    tensors: dict[str, torch.Tensor] = {}
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.dim() != 2 or x.shape != y.shape:
            raise ValueError(f"{split} inputs and labels must both be (N, L), got {tuple(x.shape)} and {tuple(y.shape)}")
        real = y[y != IGNORE_INDEX]
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab) or \
                real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab):
            raise ValueError(f"{split} token ids must lie in 0..{vocab - 1} (the tokenizer's vocabulary)")
        tensors[f"{split}_x"], tensors[f"{split}_y"] = x.detach().cpu().long(), y.detach().cpu().long()
    shapes = {}
    for name, (train, test) in (fields or {}).items():
        if train.shape[:2] != train_x.shape or test.shape[:2] != test_x.shape or train.shape[2:] != test.shape[2:]:
            raise ValueError(f"field {name!r} must be (N, L, ...) for both splits, like the inputs")
        tensors[f"train_{name}"], tensors[f"test_{name}"] = train.detach().cpu(), test.detach().cpu()
        shapes[name] = {"shape": list(train.shape[1:]), "dtype": str(train.dtype).removeprefix("torch.")}
    tensors["token_bytes"] = token_bytes.detach().cpu().long()
    folder = Path(folder)
    payload = write_payload(folder, tensors)
    write_json_atomic(folder / META_FILE, {
        "format": FORMAT, "version": VERSION, "tokenizer": dict(tokenizer), "block": int(train_x.shape[1]),
        "n_train": len(train_x), "n_test": len(test_x), "fields": shapes,
        "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), "meta": dict(meta or {}),
    })
    return folder


def _folder(path: str | Path | None) -> Path:
    if path is None:
        raise ValueError("option path is required: set data.options.path=<a folder written by a pipeline step "
                         "(lm_generate, teacher_logits) or save_token_dataset>")
    return Path(path).expanduser()


def read_token_meta(path: str | Path | None) -> dict[str, Any]:
    """The ``meta.json`` of a token-block folder; reads no tensors. Missing: DataMissingError; foreign or
    unreadable: DataError; each names the path."""
    folder = _folder(path)
    meta_file = folder / META_FILE
    meta = read_json_file(meta_file, "data set 'token_blocks': ", f"{str(folder)!r} is not a folder written by "
                          "lm_generate, teacher_logits or save_token_dataset", "write it again")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"data set 'token_blocks': {str(meta_file)!r} is not a {FORMAT} v{VERSION} description")
    return meta


def _declared_fields(options: dict[str, Any]) -> tuple[str, ...]:
    return tuple(read_token_meta(options.get("path")).get("fields", {}))


@DATASETS.register("token_blocks", description="token blocks in a folder (a teacher's generations or its stored "
                                               "top-k log-probabilities)", fields=_declared_fields, task="lm", derived=True,
                   block=lambda options: int(read_token_meta(options.get("path"))["block"]))
def token_blocks(root: str | Path | None = None, download: bool = False, path: str | None = None) -> DataBundle:
    """The token blocks in folder ``path`` (required), as a pipeline step or :func:`save_token_dataset` wrote
    them; extra per-token fields (e.g. ``topk_ids``, ``topk_logprobs``) become named fields of every sample.
    root/download are unused."""
    del root, download
    folder = _folder(path)
    meta = read_token_meta(folder)
    tensors = load_payload(folder, meta, "token_blocks")
    names = list(meta.get("fields", {}))
    fields = {n: InputField(tuple(meta["fields"][n]["shape"]), augment="none") for n in names}
    tokenizer = meta["tokenizer"]
    return DataBundle(
        name="token_blocks",
        train=ArrayDataset(tensors["train_x"], tensors["train_y"], {n: tensors[f"train_{n}"] for n in names}),
        test=ArrayDataset(tensors["test_x"], tensors["test_y"], {n: tensors[f"test_{n}"] for n in names}),
        num_classes=int(tokenizer["vocab_size"]),
        input_shape=(int(meta["block"]),),
        kind="tokens",
        fields=fields,
        tokenizer=tokenizer,
        token_bytes=tensors["token_bytes"],
    )
