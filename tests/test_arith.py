"""The arith data set (problems with worked solutions, characters) and exact-match scoring of generated answers:
the work is right arithmetic, labels count only the solution, splits never meet, a run trains on it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distillab.config import load_config
from distillab.core.errors import DataError
from distillab.data import DATASETS, build_dataset
from distillab.data.arith import (EOS, EOS_ID, PAD_ID, TOKENIZER, VOCAB, Problem, decode, encode, final_answer,
                                  held_out_problems, make_splits, parse_prompt, problems, prompts, sample_problems,
                                  save_generated)
from distillab.data.base import IGNORE_INDEX
from distillab.exact_match import exact_match, left_pad
from distillab.runner import find_config, run

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ADD_STEP = re.compile(r"^(\d)\+(\d)\+([01])=(\d\d)$")
SMALL = {"num_train": 64, "num_test": 16, "digits": [2, 3]}


def _check_add(problem: Problem, text: str) -> None:
    """Every step of an addition's work, parsed from the text alone: the column's digits, the carry in, the sum."""
    a, b = problem.operands
    assert text.startswith(problem.prompt + "<") and text.endswith(EOS)
    work, _, answer = text[len(problem.prompt) + 1: -1].partition(">")
    carry, digits = 0, []
    steps = work.split(";")
    assert len(steps) == max(len(a), len(b))
    for i, step in enumerate(steps):
        da, db, c, total = ADD_STEP.match(step).groups()
        assert int(da) == (int(a[-1 - i]) if i < len(a) else 0) and int(db) == (int(b[-1 - i]) if i < len(b) else 0)
        assert int(c) == carry
        assert int(total) == int(da) + int(db) + carry
        carry, digit = divmod(int(total), 10)
        digits.append(str(digit))
    assert answer == str(int(f"{carry}{''.join(reversed(digits))}")) == str(int(a) + int(b))


def test_addition_work_is_right_for_random_problems():
    for p in sample_problems("add", (1, 6), 300, np.random.default_rng(1)):
        _check_add(p, p.text("trace"))
    _check_add(parse_prompt("123+989="), "123+989=<3+9+0=12;2+8+1=11;1+9+1=11>1112\n")


def test_sorting_work_counts_every_digit():
    for p in sample_problems("sort", (1, 9), 200, np.random.default_rng(2)):
        work, _, answer = p.text("trace")[len(p.prompt) + 1: -1].partition(">")
        counts = dict(step.split(":") for step in work.split(";"))
        assert counts == {str(d): str(p.operands[0].count(str(d))) for d in range(10)}
        assert answer == "".join(d * int(n) for d, n in sorted(counts.items())) == "".join(sorted(p.operands[0]))


def test_labels_count_only_the_solution():
    data = build_dataset("arith", **SMALL)
    assert data.kind == "tokens" and data.num_classes == len(VOCAB) == TOKENIZER["vocab_size"]
    assert data.tokenizer["name"] == "arith-chars" and torch.equal(data.token_bytes, torch.ones(len(VOCAB)).long())
    for split in (data.train, data.test):
        for x, y in zip(split.inputs.tolist(), split.labels.tolist()):
            text = decode(x)
            problem = parse_prompt(text[: text.index("=") + 1])
            sample = problem.text("trace")
            n, prompt = len(sample) - 1, len(problem.prompt)
            assert y[: prompt - 1] == [IGNORE_INDEX] * (prompt - 1)  # no prompt character is a label
            assert decode(y[prompt - 1: n]) == sample[prompt:]  # the work, the answer and EOS are
            assert y[n:] == [IGNORE_INDEX] * (len(y) - n) and x[n:] == [PAD_ID] * (len(x) - n)  # padding counts nowhere
    assert data.input_shape == (max(len(p.text("trace")) for p in problems(data.train) + problems(data)) - 1,)


def test_splits_are_disjoint_seeded_and_independent_of_the_training_size():
    train, test = make_splits("add", (2, 3), 2000, 500, seed=3)
    assert len(set(train)) == 2000 and len(set(test)) == 500 and not set(train) & set(test)
    assert make_splits("add", (2, 3), 10, 500, seed=3)[1] == test  # the test set does not move with num_train
    assert make_splits("add", (2, 3), 10, 500, seed=4)[1] != test
    one, two = build_dataset("arith", **SMALL), build_dataset("arith", **SMALL, format="answer")
    assert problems(one) == problems(two) and problems(one.train) == problems(two.train)
    assert not set(problems(one.train)) & set(problems(one))
    assert held_out_problems(SMALL) == problems(one)
    with pytest.raises(ValueError, match="distinct"):  # 1-digit additions: 100 problems in all
        make_splits("add", 1, 90, 20, seed=0)


def test_answer_format_is_prompt_then_answer():
    data = build_dataset("arith", **SMALL, format="answer")
    for x, y in zip(data.test.inputs.tolist(), data.test.labels.tolist()):
        text = decode(x)
        problem = parse_prompt(text[: text.index("=") + 1])
        assert decode([t for t in y if t != IGNORE_INDEX]) == problem.answer + EOS
    ids, answers = prompts(data)
    found = problems(data)
    assert [decode(i) for i in ids] == [p.prompt for p in found] and answers == [p.answer for p in found]
    assert final_answer("1112\n___", "answer") == "1112" and final_answer("<3+9+0=12>12\n", "trace") == "12"
    assert final_answer("<3+9+0=12;", "trace") is None and final_answer("\n", "answer") is None


def test_bad_options_are_refused():
    for options, message in (({"task": "mul"}, "task"), ({"format": "cot"}, "format"), ({"digits": [4, 3]}, "digits"),
                             ({"task": "sort", "digits": 12}, "at most 9"), ({"block": 10}, "does not fit a block")):
        with pytest.raises(DataError, match=message):
            build_dataset("arith", **SMALL | options)
    assert DATASETS.entry("arith").meta["task"] == "lm"
    with pytest.raises(ValueError, match="not in the arith vocabulary"):
        encode("12*3=")


class Oracle(nn.Module):
    """A hand-made 'model' whose generate writes the true solution (or a wrong answer) after each prompt."""

    def __init__(self, format: str, wrong: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.format, self.wrong = format, wrong

    def generate(self, ids, max_new_tokens, *, greedy, attention_mask, eos_id):
        assert greedy and eos_id == EOS_ID
        rows = []
        for row, mask in zip(ids.tolist(), attention_mask.tolist()):
            problem = parse_prompt(decode([t for t, m in zip(row, mask) if m]))
            text = problem.text(self.format)[len(problem.prompt):]
            if self.wrong:
                text = text.replace(">" + problem.answer, ">" + str(int(problem.answer) + 1))
                text = str(int(problem.answer) + 1) + EOS if self.format == "answer" else text
            new = encode(text)[:max_new_tokens]
            rows.append(row + new + [eos_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


@pytest.mark.parametrize("fmt", ["trace", "answer"])
def test_exact_match_of_right_and_wrong_answers(fmt):
    test = problems(build_dataset("arith", **SMALL))
    assert exact_match(Oracle(fmt), test, format=fmt, batch_size=5) == 100.0
    assert exact_match(Oracle(fmt, wrong=True), test, format=fmt, batch_size=5) == 0.0
    ids, mask = left_pad([[3, 4], [5]])
    assert ids.tolist() == [[3, 4], [PAD_ID, 5]] and mask.tolist() == [[1, 1], [0, 1]]


def _tiny_run(tmp_path, *extra):
    """One epoch of the shipped student config on SMALL, on one thread (the process's count is restored)."""
    cfg = load_config(find_config("configs/arith/student_trace.yaml"), [
        f"out_dir={tmp_path / 'runs'}", "train.epochs=1", "train.batch_size=32", "train.progress=false",
        "train.tensorboard=false", "train.device=cpu", "train.threads=1",
        *(f"data.options.{k}={v}" for k, v in SMALL.items()), *extra])
    threads = torch.get_num_threads()
    try:
        return run(cfg)
    finally:
        torch.set_num_threads(threads)


def test_a_gpt_trains_on_arith_and_is_scored(tmp_path, capsys):
    summary, folder = _tiny_run(tmp_path, "name=tiny")
    assert summary["epochs"] == 1 and summary["tokenizer"] == TOKENIZER and np.isfinite(summary["test_loss"])
    spec = importlib.util.spec_from_file_location("arith_exact_match", BENCHMARKS / "arith_exact_match.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    score = script.main([str(folder), "--show", "2"])
    assert 0.0 <= score <= 100.0 and "held-out problems (format trace)" in capsys.readouterr().out


def test_a_generated_training_set_is_read_and_checked(tmp_path):
    data = build_dataset("arith", **SMALL)
    train = problems(data.train)
    path = save_generated(tmp_path / "teacher.json", [p.prompt + "<9+9+9=99>7" + EOS for p in train[:10]], task="add",
                          format="trace")
    from_file = {**SMALL, "num_train": None, "from_file": str(path)}  # num_train None: every sample of the file
    bundle = build_dataset("arith", **from_file)
    assert len(bundle.train) == 10 and problems(bundle) == problems(data)
    assert decode(t for t in bundle.train.labels[0].tolist() if t != IGNORE_INDEX) == "<9+9+9=99>7\n"
    assert len(build_dataset("arith", **from_file | {"num_train": 4}).train) == 4
    with pytest.raises(DataError, match="format=trace"):
        build_dataset("arith", **from_file | {"format": "answer"})
    leaked = save_generated(tmp_path / "leak.json", [problems(data)[0].text("trace")], task="add", format="trace")
    with pytest.raises(DataError, match="test problems"):
        build_dataset("arith", **from_file | {"from_file": str(leaked)})
    summary, _ = _tiny_run(tmp_path, "name=from_file", f"data.options.from_file={path}", "data.options.num_train=null")
    assert summary["epochs"] == 1


@pytest.mark.slow
def test_reasoning_traces_benchmark_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("reasoning_traces", BENCHMARKS / "reasoning_traces.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--seeds", "0", "1", "--teacher-epochs", "40", "--student-epochs", "1", "--num-train", "80",
                      "--num-test", "20", "--digits", "1", "1", "--out", str(tmp_path / "out"),
                      "--json", str(tmp_path / "result.json")])
    assert set(out["students"]) == {"trace", "answer", "labels"} and (tmp_path / "result.json").is_file()
    assert all(len(r["runs"]) == 2 for r in out["students"].values()) and 0 <= out["teacher"]["exact_match"] <= 100
