"""Language-modelling text data sets (``stdlib``, ``textfiles``): splits, blocks, tokenizers, errors."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch

from distillab.core.errors import DataError, DataMissingError
from distillab.data import DATASETS, build_dataset, dataset_options
from distillab.data import text as text_module
from distillab.data.base import IGNORE_INDEX
from distillab.data.text import (TextFile, Tokenizer, cap_bytes, load_tokenizer, make_blocks, read_corpus,
                                 split_of, text_bundle)

NON_ASCII = "naïve café — 日本語 🙂\r\n\ttabs  and  spaces\x00end"

# ------------------------------------------------------------------------------------ helpers


def names_in(split: str, count: int, pattern: str = "doc{:03d}.txt") -> list[str]:
    """The first ``count`` file names of ``pattern`` that the path hash puts in ``split``."""
    names = (pattern.format(i) for i in range(10_000))
    found = [name for name in names if split_of(name) == split][:count]
    assert len(found) == count
    return found


def write_corpus(folder: Path, per_split: dict[str, int], body: str = "line of text {0} ✓\n" * 3) -> dict[str, str]:
    """Write ``per_split[split]`` files landing in each split; each text starts with ``@<name>@`` so a block
    tells its file. Returns {name: text}."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {}
    for split, count in per_split.items():
        for name in names_in(split, count):
            texts[name] = f"@{name}@\n" + body.format(name)
            (folder / name).write_text(texts[name], encoding="utf-8")
    return texts


def label_stream(dataset) -> list[int]:
    """The labels of every block in order, padding left out."""
    labels = dataset.labels.flatten()
    return labels[labels != IGNORE_INDEX].tolist()


def files_of(dataset) -> set[str]:
    """The ``@name@`` markers of the files whose first block is in ``dataset`` (bytes tokenizer)."""
    names = set()
    for row_in, row_lab in zip(dataset.inputs, dataset.labels):
        if row_in[0] == ord("@"):  # a file's first block: its text starts with the marker
            ids = [int(row_in[0])] + row_lab[row_lab != IGNORE_INDEX].tolist()
            names.add(bytes(ids).decode("utf-8", errors="replace").split("@")[1])
    return names


# ------------------------------------------------------------------------------- registry / options


def test_registered_with_their_options():
    assert {"stdlib", "textfiles"} <= set(DATASETS.names())
    assert DATASETS.entry("stdlib").meta["task"] == DATASETS.entry("textfiles").meta["task"] == "lm"
    common = {"block", "tokenizer", "vocab_size", "eval_split", "max_bytes"}
    assert common | {"include_tests"} == set(dataset_options("stdlib"))
    assert common | {"suffixes"} == set(dataset_options("textfiles"))


def test_unknown_or_bad_option_refused(tmp_path):
    write_corpus(tmp_path / "c", {"train": 2, "validation": 1})
    with pytest.raises(DataError, match=r"'blok'.*did you mean 'block'"):
        build_dataset("textfiles", root=tmp_path / "c", blok=16)
    with pytest.raises(DataError, match=r"did you mean 'suffixes'"):
        build_dataset("textfiles", root=tmp_path / "c", suffix=[".txt"])
    with pytest.raises(DataError, match=r"'stdlib'.*tokenizer must be one of bytes, bpe"):
        build_dataset("stdlib", tokenizer="wordpiece", max_bytes=1000)
    with pytest.raises(DataError, match="eval_split"):
        build_dataset("textfiles", root=tmp_path / "c", eval_split="train")
    with pytest.raises(DataError, match="suffixes must be"):
        build_dataset("textfiles", root=tmp_path / "c", suffixes=["txt"])


# ------------------------------------------------------------------------------------------ splits


def test_split_is_a_fixed_hash_of_the_path():
    for path in ("a.txt", "asyncio/tasks.py", "doc005.txt", "doc006.txt", "notes/2024/ä.md"):
        bucket = int(hashlib.sha256(path.encode("utf-8")).hexdigest()[:8], 16) % 100
        expected = "train" if bucket < 90 else "validation" if bucket < 95 else "test"
        assert split_of(path) == expected
    # pinned: a change of the hash or the bounds would silently move files between splits
    assert [split_of(p) for p in ("a.txt", "asyncio/tasks.py", "doc005.txt", "doc006.txt")] == \
        ["train", "validation", "test", "validation"]


def test_splits_disjoint_complete_and_stable_under_renames(tmp_path):
    folder = tmp_path / "corpus"
    texts = write_corpus(folder, {"train": 6, "validation": 3, "test": 3})
    block = 64  # every file fits one block, so each block names its file
    val = build_dataset("textfiles", root=folder, block=block)
    tst = build_dataset("textfiles", root=folder, block=block, eval_split="test")
    train, held_val, held_test = files_of(val.train), files_of(val.test), files_of(tst.test)
    assert files_of(tst.train) == train
    assert not (train & held_val) and not (train & held_test) and not (held_val & held_test)
    assert train | held_val | held_test == set(texts)
    assert all(split_of(n) == "validation" for n in held_val) and all(split_of(n) == "test" for n in held_test)

    # add a file and rename another: no third file moves
    renamed = sorted(train)[0]
    (folder / renamed).rename(folder / f"renamed-{renamed}")
    (folder / "added.txt").write_text("@added.txt@\nnew text\n", encoding="utf-8")
    again = build_dataset("textfiles", root=folder, block=block)
    kept = set(texts) - {renamed}
    assert files_of(again.train) & kept == train - {renamed}
    assert files_of(again.test) & kept == held_val


def test_bundle_does_not_depend_on_file_order(tmp_path):
    texts = write_corpus(tmp_path / "c", {"train": 5, "validation": 2})
    files = [TextFile(name, text, len(text.encode())) for name, text in texts.items()]
    shuffled = list(files)
    random.Random(0).shuffle(shuffled)
    options = dict(block=16, tokenizer="bytes", vocab_size=1024, eval_split="validation", max_bytes=None)
    a = text_bundle("textfiles", files, tmp_path, tmp_path, **options)
    b = text_bundle("textfiles", shuffled, tmp_path, tmp_path, **options)
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.labels, y.labels)


def test_max_bytes_keeps_whole_files_within_the_budget():
    files = [TextFile(f"f{i}", "x" * size, size) for i, size in enumerate([30, 50, 10, 40, 5])]
    assert [f.path for f in cap_bytes(files, 45)] == ["f0", "f2", "f4"]  # 30 + 10 + 5; 50 and 40 passed over
    assert [f.path for f in cap_bytes(files, 3)] == ["f4"]  # none fits: the smallest
    assert [f.path for f in cap_bytes(list(reversed(files)), None)] == [f"f{i}" for i in range(5)]


# ------------------------------------------------------------------------------------------ blocks


def test_block_layout():
    seqs = [torch.arange(1, n + 1) for n in (0, 1, 2, 4, 5, 6, 13)]
    data = make_blocks(seqs, block=4)
    # n ids give ceil((n - 1) / 4) blocks: 0, 0, 1, 1, 1, 2, 3
    assert len(data) == 8 and data.inputs.shape == data.labels.shape == (8, 4)
    assert data.inputs.dtype == data.labels.dtype == torch.long
    assert data.inputs[0].tolist() == [1, 0, 0, 0] and data.labels[0].tolist() == [2, IGNORE_INDEX] + [IGNORE_INDEX] * 2
    assert data.inputs[2].tolist() == [1, 2, 3, 4] and data.labels[2].tolist() == [2, 3, 4, 5]  # exactly one block
    assert data.inputs[3].tolist() == [1, 2, 3, 4] and data.inputs[4].tolist() == [5, 0, 0, 0]
    assert data.labels[4].tolist() == [6] + [IGNORE_INDEX] * 3
    pad = data.labels == IGNORE_INDEX
    assert (data.inputs[pad] == 0).all()
    real = ~pad[:, 1:]  # positions j + 1 that hold an input: the label at j is that input
    assert torch.equal(data.inputs[:, 1:][real], data.labels[:, :-1][real])
    assert label_stream(data) == [i for s in seqs for i in s[1:].tolist()]
    x, y, index = data[5]
    assert index == 5 and x.shape == y.shape == (4,)


def test_every_non_first_token_is_a_label_once(tmp_path):
    folder = tmp_path / "c"
    bodies = ["", "a", "ab", "x" * 7, "y" * 8, "z" * 9, "ünï " * 11]  # around the block size of 8 bytes
    names = names_in("train", len(bodies)) + names_in("validation", 2)
    folder.mkdir()
    for name, body in zip(names, bodies + ["held out ✓", "more held-out text"]):
        (folder / name).write_text(body, encoding="utf-8")
    bundle = build_dataset("textfiles", root=folder, block=8)
    texts = [(folder / n).read_bytes() for n in sorted(names)]
    for dataset, split in ((bundle.train, "train"), (bundle.test, "validation")):
        expected = [b for n, t in zip(sorted(names), texts) if split_of(n) == split for b in t[1:]]
        assert label_stream(dataset) == expected
        pad = dataset.labels == IGNORE_INDEX
        assert (dataset.inputs[pad] == 0).all() and not (dataset.inputs[~pad] < 0).any()


# ------------------------------------------------------------------------------------- tokenizers


def test_bytes_tokenizer_round_trip(tmp_path):
    tok = Tokenizer()
    ids = tok.encode(NON_ASCII)
    assert ids == list(NON_ASCII.encode("utf-8")) and tok.decode(ids) == NON_ASCII
    assert tok.vocab_size == 256 and torch.equal(tok.token_bytes, torch.ones(256, dtype=torch.long))
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a character cut short decodes, replaced
    write_corpus(tmp_path / "c", {"train": 3, "validation": 1})
    bundle = build_dataset("textfiles", root=tmp_path / "c", block=32)
    assert bundle.kind == "tokens" and bundle.num_classes == 256 and bundle.input_shape == (32,)
    assert bundle.tokenizer == {"name": "bytes", "vocab_size": 256, "hash": "bytes", "path": None}
    assert bundle.mean is None and bundle.augment is None and bundle.class_names is None
    assert bundle.test_transform(bundle.train.inputs[:2]).dtype == torch.long
    assert load_tokenizer(bundle.tokenizer).decode(ids) == NON_ASCII


def test_bpe_trains_on_train_split_only_and_is_cached(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    texts = write_corpus(folder, {"train": 4, "validation": 2, "test": 1},
                         body="def {0}(x):\n    return x + 1  # naïve ✓\n" * 20)
    trained_on = []
    real_train = text_module.train_bpe

    def recording_train(train_texts, vocab_size):
        trained_on.append(list(train_texts))
        return real_train(train_texts, vocab_size)

    monkeypatch.setattr(text_module, "train_bpe", recording_train)
    bundle = build_dataset("textfiles", root=folder, block=16, tokenizer="bpe", vocab_size=300)
    assert trained_on == [[texts[n] for n in sorted(texts) if split_of(n) == "train"]]

    info = bundle.tokenizer
    path = Path(info["path"])
    assert info["name"] == "bpe" and path.is_file() and path.parent == tmp_path / "data" / "text-tokenizers"
    assert info["hash"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert 256 < info["vocab_size"] <= 300 and bundle.num_classes == info["vocab_size"]
    assert bundle.token_bytes.shape == (info["vocab_size"],) and int(bundle.token_bytes.min()) >= 1
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left behind

    def no_training(*args):
        raise AssertionError("the cached tokenizer should have been used")

    monkeypatch.setattr(text_module, "train_bpe", no_training)
    mtime = path.stat().st_mtime_ns
    again = build_dataset("textfiles", root=folder, block=16, tokenizer="bpe", vocab_size=300)
    assert again.tokenizer == info and path.stat().st_mtime_ns == mtime
    assert torch.equal(again.train.labels, bundle.train.labels)
    with pytest.raises(AssertionError, match="cached"):  # another vocabulary size: another tokenizer
        build_dataset("textfiles", root=folder, block=16, tokenizer="bpe", vocab_size=280)

    tok = load_tokenizer(info)
    for text in list(texts.values()) + [NON_ASCII]:
        ids = tok.encode(text)
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert len(tok.encode(texts[sorted(texts)[0]])) < len(texts[sorted(texts)[0]].encode())  # merges learnt
    assert torch.equal(tok.token_bytes, bundle.token_bytes)


def test_load_tokenizer_refuses_a_missing_or_changed_file(tmp_path):
    write_corpus(tmp_path / "c", {"train": 3, "validation": 1}, body="some words {0} and more words\n" * 10)
    info = build_dataset("textfiles", root=tmp_path / "c", tokenizer="bpe", vocab_size=270).tokenizer
    path = Path(info["path"])
    path.write_text(path.read_text(encoding="utf-8") + " ", encoding="utf-8")
    with pytest.raises(DataError, match="another tokenizer"):
        load_tokenizer(info)
    path.unlink()
    with pytest.raises(DataMissingError, match="does not exist"):
        load_tokenizer(info)
    with pytest.raises(DataError, match="unknown tokenizer"):
        load_tokenizer({"name": "wordpiece"})


# ------------------------------------------------------------------------------------------ stdlib


def test_stdlib_small():
    bundle = build_dataset("stdlib", max_bytes=20_000, block=64)
    assert bundle.name == "stdlib" and bundle.kind == "tokens" and bundle.input_shape == (64,)
    assert 0 < len(label_stream(bundle.train)) <= 20_000 and len(label_stream(bundle.test)) > 0
    other = build_dataset("stdlib", max_bytes=20_000, block=64, eval_split="test")
    assert torch.equal(other.train.labels, bundle.train.labels)
    assert not torch.equal(other.test.labels[:1], bundle.test.labels[:1])


def test_stdlib_bpe_small(tmp_path):
    bundle = build_dataset("stdlib", root=tmp_path / "root", max_bytes=100_000, tokenizer="bpe", vocab_size=400)
    path = Path(bundle.tokenizer["path"])
    assert path.parent == tmp_path / "root" / "text-tokenizers" and bundle.num_classes == 400
    tok = load_tokenizer(bundle.tokenizer)
    assert tok.decode(tok.encode(NON_ASCII)) == NON_ASCII


def test_read_corpus_skips(tmp_path):
    for rel in ("a.py", "pkg/b.py", "__pycache__/c.py", "site-packages/d.py", ".hidden/e.py", ".f.py",
                "test/g.py", "notes.txt", "UPPER.PY"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "latin.py").write_bytes("café = 1\n".encode("latin-1"))
    found = [f.path for f in read_corpus(tmp_path, (".py",), skip_invalid=True)]
    assert found == ["UPPER.PY", "a.py", "pkg/b.py", "test/g.py"]
    assert "test/g.py" not in [f.path for f in read_corpus(tmp_path, (".py",), ("test",), skip_invalid=True)]
    with pytest.raises(DataError, match="latin.py is not UTF-8"):
        read_corpus(tmp_path, (".py",))


# ------------------------------------------------------------------------------------------ errors


def test_missing_empty_or_foreign_folder(tmp_path):
    with pytest.raises(DataMissingError, match=r"nowhere does not exist: set data.root.*\.txt, \.md, \.rst, \.py"):
        build_dataset("textfiles", root=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no file ending in \.txt, \.md, \.rst, \.py.*suffixes"):
        build_dataset("textfiles", root=tmp_path / "empty")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "table.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"csv holds no file ending in \.txt"):
        build_dataset("textfiles", root=tmp_path / "csv")
    with pytest.raises(DataError, match="set data.root"):
        build_dataset("textfiles")


def test_too_few_files_names_the_empty_split(tmp_path):
    write_corpus(tmp_path / "c", {"train": 3})
    with pytest.raises(DataError, match=r"the validation split of .* holds no file \(3 files in all.*add more files"):
        build_dataset("textfiles", root=tmp_path / "c")
    write_corpus(tmp_path / "d", {"train": 2})
    (tmp_path / "d" / names_in("validation", 1)[0]).write_text("x")  # one byte: no block
    with pytest.raises(DataError, match="validation split .* holds no text of two tokens"):
        build_dataset("textfiles", root=tmp_path / "d")
