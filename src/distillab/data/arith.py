"""Arithmetic problems with their worked solutions, as characters: the data of reasoning-trace distillation.

DeepSeek-R1's distilled models (DeepSeek-AI 2025, arXiv 2501.12948, section 2.4) are small models fine-tuned on
a large model's reasoning traces. This data set is that setting at CPU scale: each sample is one problem whose
answer needs work, written ``PROMPT WORK ANSWER EOS`` in a character vocabulary (kind "tokens", task "lm").

Tasks (option ``task``):

- ``add``: two numbers of ``digits`` digits each (one count, or a range ``[lo, hi]`` drawn per operand; default
  3 to 4). The work goes column by column, least significant digit first, each step ``a+b+c=cs`` (the column's
  digits, the carry in, then the two-digit sum: carry out and digit)::

      123+989=<3+9+0=12;2+8+1=11;1+9+1=11>1112\\n

- ``sort``: a string of ``digits`` digits (at most 9) to sort; the work counts each digit value, ``d:n``::

      31422=<0:0;1:1;2:2;3:1;4:1;5:0;6:0;7:0;8:0;9:0>12234\\n

Option ``format``: "trace" (prompt, work, answer) or "answer" (the answer right after the prompt,
``123+989=1112\\n``). The labels count only what follows the prompt's ``=`` (:func:`make_blocks`): the model
is trained to solve, not to pose, problems.

Splits. One seeded generator (``seed``) draws ``num_test`` distinct problems first, then ``num_train`` more,
distinct from each other and from the test ones: the test set depends on neither ``num_train`` nor the
format, and no test problem is ever trained on.

Generated training sets (``from_file``): a model's own outputs for training prompts (sequence-level KD on a
teacher's work), written by :func:`save_generated` as JSON; the file replaces the generated training set and
the test set stays the ground truth above. A file whose prompts meet the test problems is refused.

The tokenizer record is ``{"name": "arith-chars", "vocab_size": 18, "hash": ...}`` and every token stands
for one byte (the held-out bits per byte are bits per character).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from distillab.core.errors import DataError
from distillab.core.files import write_json_atomic
from distillab.data.base import DATASETS, IGNORE_INDEX, ArrayDataset, DataBundle, read_json_file

TASK = "lm"  # registry meta: the plan pairs this data set with language models only
TASKS = ("add", "sort")
FORMATS = ("trace", "answer")

VOCAB = "_\n0123456789+=;<>:"  # a character's id is its index; "_" pads, "\n" ends a sample
PAD, EOS = "_", "\n"
PAD_ID, EOS_ID = VOCAB.index(PAD), VOCAB.index(EOS)
PROMPT_END, WORK_BEGIN, ANSWER_MARK = "=", "<", ">"
TOKENIZER = {"name": "arith-chars", "vocab_size": len(VOCAB),
             "hash": hashlib.sha256(f"arith-chars/1/{VOCAB}".encode()).hexdigest()}

DEFAULT_TASK, DEFAULT_FORMAT = "add", "trace"
DEFAULT_DIGITS = (3, 4)
DEFAULT_NUM_TRAIN = 10000  # generated training problems (without from_file)
DEFAULT_NUM_TEST = 1000  # held-out problems
DEFAULT_SEED = 0  # the problems' generator
MAX_SORT_DIGITS = 9  # a digit's count in the sort work is one character
DRAW_BATCH = 4096  # candidate problems drawn per round of rejection sampling
GENERATED_FORMAT = "distillab.arith-generated"
GENERATED_VERSION = 1
_IDS = {ch: i for i, ch in enumerate(VOCAB)}


# ------------------------------------------------------------------------------------------ characters


def encode(text: str) -> list[int]:
    """The ids of ``text``; a character outside :data:`VOCAB` is a ValueError naming it."""
    try:
        return [_IDS[ch] for ch in text]
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the arith vocabulary {VOCAB!r}") from None


def decode(ids: Sequence[int]) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


# ------------------------------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Problem:
    """One problem: ``task`` "add" with ``operands`` the two numbers' digit strings, or "sort" with the one
    digit string to sort."""

    task: str
    operands: tuple[str, ...]

    @property
    def prompt(self) -> str:
        return ("+".join(self.operands) if self.task == "add" else self.operands[0]) + PROMPT_END

    @property
    def answer(self) -> str:
        if self.task == "add":
            return str(int(self.operands[0]) + int(self.operands[1]))
        return "".join(sorted(self.operands[0]))

    @property
    def work(self) -> str:
        """The worked solution between the markers ``<`` and ``>``."""
        if self.task == "add":
            a, b = self.operands
            steps, carry = [], 0
            for i in range(max(len(a), len(b))):
                da = int(a[-1 - i]) if i < len(a) else 0
                db = int(b[-1 - i]) if i < len(b) else 0
                total = da + db + carry
                steps.append(f"{da}+{db}+{carry}={total:02d}")
                carry = total // 10
        else:
            steps = [f"{d}:{self.operands[0].count(str(d))}" for d in range(10)]
        return WORK_BEGIN + ";".join(steps) + ANSWER_MARK

    def text(self, format: str) -> str:
        """The whole sample: prompt, work (format "trace" only), answer, EOS."""
        return self.prompt + (self.work if format == "trace" else "") + self.answer + EOS

    def prompt_ids(self) -> list[int]:
        return encode(self.prompt)


def parse_prompt(text: str) -> Problem:
    """The problem a prompt (up to and including its ``=``) poses; a ValueError if it poses none."""
    body, end, rest = text.partition(PROMPT_END)
    parts = body.split("+")
    if not end or rest or not all(p.isdigit() and p.isascii() for p in parts) or len(parts) > 2:
        raise ValueError(f"{text!r} is not an arith prompt ('123+989=' or '31422=')")
    return Problem("add", tuple(parts)) if len(parts) == 2 else Problem("sort", (body,))


def final_answer(generated: str, format: str) -> str | None:
    """The answer a model wrote after a prompt: what follows the ``>`` marker (format "trace") or the whole
    continuation ("answer"), up to EOS. None when there is no answer (no marker, or no digits)."""
    text = generated.split(EOS, 1)[0]
    if format == "trace":
        if ANSWER_MARK not in text:
            return None
        text = text.split(ANSWER_MARK, 1)[1]
    return text if text.isdigit() else None


def _digit_range(digits: int | Sequence[int]) -> tuple[int, int]:
    lo, hi = (digits, digits) if isinstance(digits, int) else tuple(digits)
    if not (isinstance(lo, int) and isinstance(hi, int)) or not 1 <= lo <= hi:
        raise ValueError(f"digits must be a positive count or a range [lo, hi] with 1 <= lo <= hi, got {digits!r}")
    return lo, hi


def _space(task: str, lo: int, hi: int) -> int:
    """How many distinct problems the options allow."""
    if task == "add":
        numbers = 10 ** hi - (10 ** (lo - 1) if lo > 1 else 0)  # lo..hi digits, no leading zero (0 is 1 digit)
        return numbers * numbers
    return sum(10 ** n for n in range(lo, hi + 1))


def _draw(task: str, lo: int, hi: int, n: int, rng: np.random.Generator) -> list[Problem]:
    """``n`` problems, possibly repeated: each operand's length uniform in lo..hi, then its value uniform among
    numbers of that length (add: no leading zero, 0 being one digit) or its digits uniform (sort)."""
    if task == "add":
        lengths = rng.integers(lo, hi + 1, size=(n, 2))
        values = rng.integers(np.where(lengths == 1, 0, 10 ** (lengths - 1)), 10 ** lengths)
        return [Problem("add", (str(a), str(b))) for a, b in values.tolist()]
    lengths = rng.integers(lo, hi + 1, size=n).tolist()
    rows = rng.integers(0, 10, size=(n, hi)).astype(np.uint8) + ord("0")
    return [Problem("sort", (row.tobytes()[:k].decode(),)) for row, k in zip(rows, lengths)]


def sample_problems(task: str, digits: int | Sequence[int], n: int, rng: np.random.Generator,
                    exclude: frozenset[Problem] | set[Problem] = frozenset()) -> list[Problem]:
    """``n`` distinct problems drawn from ``rng``, none of them in ``exclude``, in the order drawn."""
    lo, hi = _digit_range(digits)
    room = _space(task, lo, hi) - len(exclude)
    if n > room:
        raise ValueError(f"only {room} distinct {task} problems of {lo} to {hi} digits are left to draw, {n} asked: "
                         "ask for fewer (num_train, num_test) or allow more digits")
    seen, out = set(exclude), []
    while len(out) < n:
        for p in _draw(task, lo, hi, min(DRAW_BATCH, 2 * (n - len(out)) + 16), rng):
            if p not in seen:
                seen.add(p)
                out.append(p)
                if len(out) == n:
                    break
    return out


def make_splits(task: str, digits: int | Sequence[int], num_train: int, num_test: int,
                seed: int) -> tuple[list[Problem], list[Problem]]:
    """(train, test) problems: the test ones drawn first from ``seed``, then training ones distinct from them."""
    rng = np.random.default_rng(seed)
    test = sample_problems(task, digits, num_test, rng)
    return sample_problems(task, digits, num_train, rng, exclude=set(test)), test


# ------------------------------------------------------------------------------------------ blocks


def make_blocks(texts: Sequence[str], block: int) -> ArrayDataset:
    """Next-token blocks of whole samples, one per text: inputs (N, block) are a text's ids but the last, labels
    its ids but the first, IGNORE_INDEX where the label is a prompt character or padding (inputs PAD_ID)."""
    inputs = torch.full((len(texts), block), PAD_ID, dtype=torch.long)
    labels = torch.full((len(texts), block), IGNORE_INDEX, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = torch.tensor(encode(text), dtype=torch.long)
        if len(ids) - 1 > block:
            raise ValueError(f"a sample of {len(ids)} characters does not fit a block of {block} tokens (it needs "
                             f"{len(ids) - 1}): raise block, or leave it unset (the longest sample's length)")
        prompt = text.index(PROMPT_END) + 1
        inputs[row, : len(ids) - 1] = ids[:-1]
        labels[row, : len(ids) - 1] = ids[1:]
        labels[row, : prompt - 1] = IGNORE_INDEX  # the label at position t is character t + 1
    return ArrayDataset(inputs, labels)


def problems(data: DataBundle | Dataset) -> list[Problem]:
    """The problem of every row of ``data`` (a bundle: its test set), read from the row's prompt characters:
    the true answers are recomputed, whatever the row's labels say (a teacher's answers included)."""
    dataset = data.test if isinstance(data, DataBundle) else data
    out = []
    for row in dataset.inputs.tolist():
        text = decode(row)
        out.append(parse_prompt(text[: text.index(PROMPT_END) + 1]))
    return out


def held_out_problems(options: dict[str, Any]) -> list[Problem]:
    """The test problems of the data set ``arith`` built with ``options`` (as a run's config records them),
    without building it."""
    return make_splits(options.get("task", DEFAULT_TASK), options.get("digits", DEFAULT_DIGITS), 0,
                       options.get("num_test", DEFAULT_NUM_TEST), options.get("seed", DEFAULT_SEED))[1]


def prompts(data: DataBundle | Dataset) -> tuple[list[list[int]], list[str]]:
    """The prompt ids and true answers of every row of ``data`` (a bundle: its test set)."""
    found = problems(data)
    return [p.prompt_ids() for p in found], [p.answer for p in found]


# ------------------------------------------------------------------------------------------ generated sets


def save_generated(path: str | Path, texts: Sequence[str], *, task: str, format: str,
                   meta: dict[str, Any] | None = None) -> Path:
    """Write ``texts`` (whole samples: prompt, then what a model wrote) as a training set for option
    ``from_file`` of the data set ``arith``, atomically, with the tokenizer, task, format and ``meta``."""
    if task not in TASKS or format not in FORMATS:
        raise ValueError(f"task must be one of {TASKS} and format one of {FORMATS}, got {task!r}, {format!r}")
    for text in texts:
        _check_text(text, task, str(path))
    write_json_atomic(path, {"format": GENERATED_FORMAT, "version": GENERATED_VERSION, "tokenizer": TOKENIZER,
                             "task": task, "text_format": format, "meta": dict(meta or {}), "texts": list(texts)})
    return Path(path)


def _check_text(text: str, task: str, where: str) -> Problem:
    if not isinstance(text, str):
        raise DataError(f"{where}: a sample is a {type(text).__name__}, not text")
    try:
        encode(text)
        problem = parse_prompt(text[: text.find(PROMPT_END) + 1])
    except ValueError as exc:
        raise DataError(f"{where}: sample {text[:40]!r}: {exc}") from None
    if problem.task != task or PAD in text:
        raise DataError(f"{where}: sample {text[:40]!r} is not a padding-free {task} sample")
    return problem


def read_generated(path: str | Path, task: str, format: str) -> tuple[list[str], list[Problem]]:
    """The texts of a file written by :func:`save_generated` and their problems, checked against the data set's
    options (a DataError naming the file and the option otherwise)."""
    path = Path(path).expanduser()
    record = read_json_file(path, "data set 'arith': from_file ",
                            "write it with distillab.data.arith.save_generated or fix the path", "write it again")
    if not isinstance(record, dict) or record.get("format") != GENERATED_FORMAT:
        raise DataError(f"data set 'arith': {str(path)!r} is not a {GENERATED_FORMAT} file (save_generated writes one)")
    if record.get("version") != GENERATED_VERSION or record.get("tokenizer") != TOKENIZER:
        raise DataError(f"data set 'arith': {str(path)!r} was written with another version or vocabulary: "
                        "write it again")
    for option, value, key in (("task", task, "task"), ("format", format, "text_format")):
        if record.get(key) != value:
            raise DataError(f"data set 'arith': {str(path)!r} holds {key.replace('_', ' ')} {record.get(key)!r} "
                            f"samples: set data.options.{option}={record.get(key)}")
    texts = record.get("texts")
    if not isinstance(texts, list) or not texts:
        raise DataError(f"data set 'arith': {str(path)!r} holds no samples")
    return texts, [_check_text(t, task, f"data set 'arith': {str(path)!r}") for t in texts]


# ------------------------------------------------------------------------------------------ the data set


@DATASETS.register("arith", description="synthetic arithmetic (multi-digit addition, sorting) with worked "
                                        "solutions, characters, for reasoning-trace distillation", task=TASK)
def arith(
    root: str | Path | None = None,
    download: bool = False,
    task: str = DEFAULT_TASK,
    digits: int | Sequence[int] = DEFAULT_DIGITS,
    format: str = DEFAULT_FORMAT,
    block: int | None = None,
    num_train: int | None = None,
    num_test: int = DEFAULT_NUM_TEST,
    seed: int = DEFAULT_SEED,
    from_file: str | None = None,
) -> DataBundle:
    """Problems of ``task`` ("add" or "sort") with ``digits`` digits (a count or [lo, hi]) as next-token blocks
    (module docstring). format: "trace" (prompt, work, answer) or "answer" (prompt, answer). block: tokens per
    block (None: the longest sample's length). num_train: training problems (None: 10000, or every sample of
    ``from_file``, else its first num_train). num_test: held-out problems. seed: the problems' generator.
    from_file: a training set written by :func:`save_generated` (e.g. a teacher's traces) instead of the
    generated one. root/download are unused.
    """
    del root, download
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    lo, hi = _digit_range(digits)
    if task == "sort" and hi > MAX_SORT_DIGITS:
        raise ValueError(f"sort strings have at most {MAX_SORT_DIGITS} digits (a count is one character), got {hi}")
    if num_test < 1 or (num_train is not None and num_train < 1):
        raise ValueError(f"num_train and num_test must be positive, got {num_train} and {num_test}")
    if block is not None and int(block) < 1:
        raise ValueError(f"block must be a positive number of tokens or null (the longest sample), got {block}")
    if from_file is None:
        train, test = make_splits(task, (lo, hi), DEFAULT_NUM_TRAIN if num_train is None else num_train, num_test, seed)
        train_texts = [p.text(format) for p in train]
    else:
        test = make_splits(task, (lo, hi), 0, num_test, seed)[1]
        train_texts, train_problems = read_generated(from_file, task, format)
        if num_train is not None:
            if num_train > len(train_texts):
                raise ValueError(f"num_train is {num_train} but {from_file} holds {len(train_texts)} samples")
            train_texts, train_problems = train_texts[:num_train], train_problems[:num_train]
        shared = set(train_problems) & set(test)
        if shared:
            raise DataError(f"data set 'arith': {len(shared)} prompts of {from_file} are test problems (e.g. "
                            f"{next(iter(shared)).prompt!r}): write the file from the training prompts of the same "
                            "seed and digits, or change data.options.seed")
    test_texts = [p.text(format) for p in test]
    longest = max(len(t) for t in (*train_texts, *test_texts)) - 1
    length = longest if block is None else int(block)
    return DataBundle(
        name="arith",
        train=make_blocks(train_texts, length),
        test=make_blocks(test_texts, length),
        num_classes=len(VOCAB),
        input_shape=(length,),
        kind="tokens",
        tokenizer=dict(TOKENIZER),
        token_bytes=torch.ones(len(VOCAB), dtype=torch.long),
    )
