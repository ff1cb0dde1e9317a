"""Language-modelling text: the Python standard library's own sources, or a folder of the user's text files.

Two registered data sets read text files and cut them into next-token blocks (kind "tokens"):

- ``stdlib``: every ``.py`` file of this interpreter's standard library (``sysconfig.get_paths()["stdlib"]``),
  a real corpus present on every machine, nothing to download. Files that are not UTF-8 are skipped; the
  ``test`` package is kept unless ``include_tests=false``.
- ``textfiles``: the files under ``root`` (required) whose name ends in one of ``suffixes``.

Both pass over hidden files and folders and ``__pycache__`` / ``site-packages`` / ``dist-packages``.

Splits. A file goes to a split by a hash of its POSIX path relative to the corpus root (:func:`split_of`:
90% train, 5% validation, 5% test), so the split never changes, never depends on file order, and adding or
renaming a file moves no other. ``eval_split`` says which held-out split becomes the bundle's ``test`` (the
one the engine evaluates on). ``max_bytes`` keeps the whole files, in sorted path order, that fit in a budget per
split (train ``max_bytes``, the eval split a tenth of it; at least one file), for small tests and quick runs.

Tokenisation (:class:`Tokenizer`). ``bytes``: UTF-8 bytes, 256 ids, nothing to train. ``bpe``: a byte-level
BPE (the ``tokenizers`` package) trained on the training split only, cached as JSON under
``<data root>/text-tokenizers/`` and reused. The bundle records ``{"name", "vocab_size", "hash", "path"}``,
from which :func:`load_tokenizer` rebuilds the tokenizer (to decode generations later); ``token_bytes``
holds the UTF-8 bytes each id stands for, so a held-out loss converts to bits per byte.

Blocks (:func:`make_blocks`). A file's ids are cut into non-overlapping chunks ``ids[i*L : i*L + L + 1]``;
the inputs are a chunk less its last id, the labels the chunk less its first. Every id of a file but its
first is thus a label exactly once, and no block crosses two files. A file's last chunk is right-padded:
inputs with 0, labels with ``IGNORE_INDEX``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from distillab.core.errors import DataError, DataMissingError
from distillab.core.files import atomic_file
from distillab.data.base import DATASETS, IGNORE_INDEX, ArrayDataset, DataBundle, default_data_root, resolve_root

if TYPE_CHECKING:
    import tokenizers

TASK = "lm"  # registry meta: language modelling, so the plan pairs these data sets with language models only
SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")  # the held-out splits that can become the bundle's test set
SPLIT_BUCKETS = 100  # a file's bucket: its path's sha256, first 8 hex digits, mod 100
SPLIT_ENDS = {"train": 90, "validation": 95, "test": 100}  # each split takes the buckets below its end
EVAL_BUDGET_DIVISOR = 10  # with max_bytes, the eval split keeps max_bytes / 10 bytes

TOKENIZERS = ("bytes", "bpe")
BYTE_VOCAB = 256  # ids of the bytes tokenizer, and the alphabet every byte-level BPE starts from
PAD_INPUT = 0  # input id at padded positions (their label is IGNORE_INDEX, so the value never counts)
TOKENIZER_DIR = "text-tokenizers"  # under the data root: trained BPE tokenizers, one JSON file each
TOKENIZER_RECIPE = 1  # part of a cached tokenizer's key: bump when train_bpe changes

DEFAULT_SUFFIXES = (".txt", ".md", ".rst", ".py")
SKIP_DIRS = ("__pycache__", "site-packages", "dist-packages")  # installed packages and bytecode: not corpus text
TEST_DIRS = ("test", "tests", "idle_test")  # the stdlib's test packages, skipped with include_tests=false


# ------------------------------------------------------------------------------------------ corpus


@dataclass(frozen=True)
class TextFile:
    """One file of a corpus: its POSIX path relative to the corpus root, its text and its UTF-8 size."""

    path: str
    text: str
    size: int


def read_corpus(root: Path, suffixes: Sequence[str], skip_dirs: Sequence[str] = (),
                skip_invalid: bool = False) -> list[TextFile]:
    """The files under ``root`` whose name ends in one of ``suffixes`` (any case), sorted by relative path.

    Hidden files and folders, :data:`SKIP_DIRS` and ``skip_dirs`` are passed over. A file that is not UTF-8
    is skipped with ``skip_invalid``, else a DataError naming it.
    """
    wanted = tuple(s.lower() for s in suffixes)
    skip = set(SKIP_DIRS) | set(skip_dirs)
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        for name in names:
            if name.startswith(".") or not name.lower().endswith(wanted):
                continue
            path = Path(folder) / name
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if skip_invalid:
                    continue
                raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): convert it to "
                                "UTF-8 or move it out of the folder") from None
            files.append(TextFile(path.relative_to(root).as_posix(), text, len(raw)))
    return sorted(files, key=lambda f: f.path)


def split_of(path: str) -> str:
    """The split of the file at POSIX ``path`` (relative to the corpus root): fixed by the path alone."""
    bucket = int(hashlib.sha256(path.encode("utf-8")).hexdigest()[:8], 16) % SPLIT_BUCKETS
    return next(split for split in SPLITS if bucket < SPLIT_ENDS[split])


def cap_bytes(files: Sequence[TextFile], budget: int | None) -> list[TextFile]:
    """The files, in path order, that fit in ``budget`` UTF-8 bytes: each whole file is kept if it still fits,
    passed over if not; when none fits, the smallest. All of them when ``budget`` is None."""
    ordered = sorted(files, key=lambda f: f.path)
    if budget is None or not ordered:
        return ordered
    kept, total = [], 0
    for f in ordered:
        if total + f.size <= budget:
            kept.append(f)
            total += f.size
    return kept or [min(ordered, key=lambda f: (f.size, f.path))]


# --------------------------------------------------------------------------------------- tokenizers


class Tokenizer:
    """Text <-> token ids: UTF-8 bytes (no ``backend``), or a byte-level BPE of the ``tokenizers`` package.

    vocab_size: number of ids. token_bytes: (vocab_size,) LongTensor, the UTF-8 bytes each id stands for.
    info: the record kept in the bundle and in checkpoints, from which :func:`load_tokenizer` rebuilds it.
    """

    def __init__(self, backend: "tokenizers.Tokenizer | None" = None, path: Path | None = None,
                 digest: str = "bytes") -> None:
        self._backend = backend
        self.name = "bytes" if backend is None else "bpe"
        self.path = path
        self.hash = digest
        if backend is None:
            self.vocab_size = BYTE_VOCAB
            self.token_bytes = torch.ones(BYTE_VOCAB, dtype=torch.long)
        else:
            self.vocab_size = backend.get_vocab_size()
            self.token_bytes = _byte_level_lengths(backend)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """The byte-level BPE saved as ``tokenizers`` JSON at ``path``; its hash is the file's sha256."""
        from tokenizers import Tokenizer as Backend

        path = Path(path)
        raw = path.read_bytes()
        return cls(Backend.from_str(raw.decode("utf-8")), path, hashlib.sha256(raw).hexdigest())

    @property
    def info(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "hash": self.hash,
                "path": None if self.path is None else str(self.path)}

    def encode(self, text: str) -> list[int]:
        return self.encode_tensors([text])[0].tolist()

    def encode_tensors(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Each text's ids as a LongTensor (the BPE encodes the batch in parallel)."""
        if self._backend is None:
            return [torch.from_numpy(np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64))
                    for t in texts]
        return [torch.tensor(e.ids, dtype=torch.long) for e in self._backend.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; bytes that do not form UTF-8 (a generation cut mid-character) become U+FFFD."""
        ids = [int(i) for i in ids]
        if self._backend is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self._backend.decode(ids)


def _byte_level_lengths(backend: "tokenizers.Tokenizer") -> torch.Tensor:
    """Bytes per id of a byte-level BPE: each character of a byte-level token stands for exactly one byte
    (decoding one token alone could split a UTF-8 character and miscount)."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = set(ByteLevel.alphabet())
    lengths = torch.zeros(backend.get_vocab_size(), dtype=torch.long)
    for token, i in backend.get_vocab().items():
        if not set(token) <= alphabet:
            raise DataError(f"tokenizer token {token!r} (id {i}) is not byte-level: only byte-level BPE "
                            "tokenizers are supported")
        lengths[i] = len(token)
    return lengths


def train_bpe(texts: Sequence[str], vocab_size: int) -> str:
    """A byte-level BPE of at most ``vocab_size`` ids (all 256 bytes, then merges) trained on ``texts``,
    as ``tokenizers`` JSON. No special tokens: byte-level BPE needs none, every string encodes."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # no added space: exact round trip
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # unseen bytes too
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return backend.to_str()


def bpe_cache_path(cache_dir: Path, corpus: str, train: Sequence[TextFile], vocab_size: int) -> Path:
    """Where the BPE for these training files lives: the key hashes the corpus name, each file's path, size
    and content hash (two folders with same-named, same-sized files still differ), and the vocabulary size."""
    files = [[f.path, f.size, hashlib.sha256(f.text.encode("utf-8")).hexdigest()] for f in train]
    key = json.dumps({"recipe": TOKENIZER_RECIPE, "corpus": corpus, "files": files, "vocab_size": vocab_size})
    return cache_dir / f"{corpus}-bpe{vocab_size}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def bpe_tokenizer(cache_dir: Path, corpus: str, train: Sequence[TextFile], vocab_size: int) -> Tokenizer:
    """The byte-level BPE of ``train``: read from the cache, else trained and written there atomically."""
    path = bpe_cache_path(cache_dir, corpus, train, vocab_size)
    if not path.is_file():
        trained = train_bpe([f.text for f in train], vocab_size)
        with atomic_file(path) as fh:
            fh.write(trained.encode("utf-8"))
    return Tokenizer.from_file(path)


def load_tokenizer(info: dict[str, Any]) -> Tokenizer:
    """The tokenizer a bundle's (or checkpoint's) ``tokenizer`` record describes; a BPE file that is gone or
    holds another tokenizer than the recorded one (by hash) is refused."""
    name = info.get("name")
    if name == "bytes":
        tokenizer = Tokenizer()
    elif name == "bpe":
        path = info.get("path")
        if not path or not Path(path).is_file():
            raise DataMissingError(f"tokenizer file {path!r} does not exist: copy it there, or build the data set "
                                   "again with the same options and files (which retrains it)")
        tokenizer = Tokenizer.from_file(path)
    else:
        raise DataError(f"unknown tokenizer {name!r} in the record {info}: known tokenizers: {', '.join(TOKENIZERS)}")
    if tokenizer.hash != info.get("hash") or tokenizer.vocab_size != info.get("vocab_size"):
        where = tokenizer.info["path"] or name
        raise DataError(f"tokenizer {where!r} is another tokenizer (hash {tokenizer.hash[:12]}, "
                        f"{tokenizer.vocab_size} ids) than the one recorded (hash {str(info.get('hash'))[:12]}, "
                        f"{info.get('vocab_size')} ids): restore the recorded file")
    return tokenizer


# ------------------------------------------------------------------------------------------ blocks


def make_blocks(sequences: Sequence[torch.Tensor], block: int) -> ArrayDataset:
    """Next-token blocks of each id sequence (one per file): inputs (N, block) and labels (N, block).

    Chunk i of a sequence is ``ids[i*block : i*block + block + 1]``; inputs are its ids but the last, labels
    its ids but the first; the last chunk is padded (inputs PAD_INPUT, labels IGNORE_INDEX). A sequence of
    n >= 2 ids gives ceil((n - 1) / block) blocks, shorter ones none.
    """
    inputs, labels = [], []
    for ids in sequences:
        n = len(ids)
        if n < 2:
            continue
        rows = -(-(n - 1) // block)
        x = torch.full((rows * block,), PAD_INPUT, dtype=torch.long)
        y = torch.full((rows * block,), IGNORE_INDEX, dtype=torch.long)
        x[: n - 1], y[: n - 1] = ids[:-1], ids[1:]
        inputs.append(x.view(rows, block))
        labels.append(y.view(rows, block))
    if not inputs:
        empty = torch.zeros(0, block, dtype=torch.long)
        return ArrayDataset(empty, empty.clone())
    return ArrayDataset(torch.cat(inputs), torch.cat(labels))


# ------------------------------------------------------------------------------------------ bundles


def _check_options(block: int, tokenizer: str, vocab_size: int, eval_split: str, max_bytes: int | None) -> None:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    if int(block) < 1:
        raise ValueError(f"block must be a positive number of tokens, got {block}")
    if int(vocab_size) < BYTE_VOCAB:
        raise ValueError(f"vocab_size must be at least {BYTE_VOCAB} (the byte alphabet), got {vocab_size}")
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"eval_split must be one of {', '.join(EVAL_SPLITS)}, got {eval_split!r}")
    if max_bytes is not None and int(max_bytes) < 1:
        raise ValueError(f"max_bytes must be a positive number of bytes or null (all), got {max_bytes}")


def text_bundle(name: str, files: Sequence[TextFile], where: Path, cache_dir: Path, *, block: int,
                tokenizer: str, vocab_size: int, eval_split: str, max_bytes: int | None) -> DataBundle:
    """The bundle of corpus ``files`` (read from ``where``): split by path hash, capped, tokenised, blocked."""
    by_split: dict[str, list[TextFile]] = {split: [] for split in SPLITS}
    for f in files:
        by_split[split_of(f.path)].append(f)
    eval_budget = None if max_bytes is None else max(1, int(max_bytes) // EVAL_BUDGET_DIVISOR)
    chosen = {"train": cap_bytes(by_split["train"], None if max_bytes is None else int(max_bytes)),
              eval_split: cap_bytes(by_split[eval_split], eval_budget)}
    for split, kept in chosen.items():
        if not kept:
            raise DataError(f"data set {name!r}: the {split} split of {where} holds no file ({len(files)} files in "
                            f"all; each file goes to a split by a hash of its path, about "
                            f"{SPLIT_ENDS['test'] - SPLIT_ENDS['validation']}% to each held-out split): add more "
                            "files (a few dozen at least)")
    if tokenizer == "bytes":
        tok = Tokenizer()
    else:
        tok = bpe_tokenizer(cache_dir, name, chosen["train"], int(vocab_size))
    sets = {split: make_blocks(tok.encode_tensors([f.text for f in kept]), int(block))
            for split, kept in chosen.items()}
    for split, blocks in sets.items():
        if len(blocks) == 0:
            raise DataError(f"data set {name!r}: the {split} split of {where} holds no text of two tokens or more "
                            f"({len(chosen[split])} files, all empty or one token long): add longer files")
    return DataBundle(
        name=name,
        train=sets["train"],
        test=sets[eval_split],
        num_classes=tok.vocab_size,
        input_shape=(int(block),),
        kind="tokens",
        mean=None,
        std=None,
        augment=None,
        class_names=None,
        tokenizer=tok.info,
        token_bytes=tok.token_bytes,
    )


@DATASETS.register("stdlib", description="Python standard library sources (.py) for language modelling "
                                         "(UTF-8 bytes or a byte-level BPE)", task=TASK)
def stdlib(
    root: str | Path | None = None,
    download: bool = False,
    block: int = 128,
    tokenizer: str = "bytes",
    vocab_size: int = 1024,
    eval_split: str = "validation",
    max_bytes: int | None = None,
    include_tests: bool = True,
) -> DataBundle:
    """This interpreter's standard library ``.py`` files as next-token blocks (see the module docstring).

    root: the data root, where a trained BPE is cached (``<root>/text-tokenizers/``). block: tokens per
    block. tokenizer: "bytes" (256 ids) or "bpe" (byte-level, trained on the training split).
    vocab_size: the BPE's vocabulary (unused with bytes). eval_split: "validation" or "test", the split
    given as the bundle's test set. max_bytes: keep about this many bytes of training text (null: all).
    include_tests: keep the test packages (test/, tests/, idle_test/). ``download`` is unused.
    """
    del download
    _check_options(block, tokenizer, vocab_size, eval_split, max_bytes)
    source = Path(sysconfig.get_paths()["stdlib"])
    if not source.is_dir():
        raise DataMissingError(f"data set 'stdlib': the standard library folder {source} does not exist (a Python "
                               "installed without its sources): use data set textfiles on a folder of text")
    files = read_corpus(source, (".py",), skip_dirs=() if include_tests else TEST_DIRS, skip_invalid=True)
    return text_bundle("stdlib", files, source, resolve_root(root) / TOKENIZER_DIR, block=block,
                       tokenizer=tokenizer, vocab_size=vocab_size, eval_split=eval_split, max_bytes=max_bytes)


@DATASETS.register("textfiles", description="a folder of your text files (root) for language modelling "
                                            "(UTF-8 bytes or a byte-level BPE)", task=TASK)
def textfiles(
    root: str | Path | None = None,
    download: bool = False,
    suffixes: Sequence[str] = DEFAULT_SUFFIXES,
    block: int = 128,
    tokenizer: str = "bytes",
    vocab_size: int = 1024,
    eval_split: str = "validation",
    max_bytes: int | None = None,
) -> DataBundle:
    """The UTF-8 text files under ``root`` (required) whose name ends in one of ``suffixes``, as next-token
    blocks (see the module docstring); a file that is not UTF-8 is an error naming it.

    A trained BPE is cached under the default data root (``$DISTILLAB_DATA/text-tokenizers/``), never in the
    user's folder. The other options are :func:`stdlib`'s. ``download`` is unused.
    """
    del download
    _check_options(block, tokenizer, vocab_size, eval_split, max_bytes)
    suffixes = (suffixes,) if isinstance(suffixes, str) else tuple(suffixes)
    bad = [s for s in suffixes if not (isinstance(s, str) and s.startswith(".") and len(s) > 1)]
    if not suffixes or bad:
        raise ValueError(f"suffixes must be file name endings starting with a dot, e.g. [.txt, .md], got "
                         f"{list(suffixes)}")
    looked_for = ", ".join(suffixes)
    if root is None:
        raise ValueError(f"textfiles reads the folder given as root: set data.root=<a folder of {looked_for} files>")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataMissingError(f"data set 'textfiles': folder {folder} does not exist: set data.root to a folder "
                               f"of text files ({looked_for})")
    files = read_corpus(folder, suffixes)
    if not files:
        raise DataError(f"data set 'textfiles': folder {folder} holds no file ending in {looked_for} (hidden folders "
                        f"and {', '.join(SKIP_DIRS)} are not searched): put text files there, or set "
                        "data.options.suffixes to the endings your files have")
    return text_bundle("textfiles", files, folder, default_data_root() / TOKENIZER_DIR, block=block,
                       tokenizer=tokenizer, vocab_size=vocab_size, eval_split=eval_split, max_bytes=max_bytes)
