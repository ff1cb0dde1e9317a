"""Exact-match accuracy of a trained language model on the held-out problems of the data set it was trained on (arith).

The model comes from a run folder or a model file; the problems are the test set its run's data options
(task, digits, num_test, seed) give, and it is read the way it was trained to write (data option format, or
``--format``). Greedy generation, batched.

    python benchmarks/arith_exact_match.py runs/reasoning_traces/students/trace-s0
    python benchmarks/arith_exact_match.py runs/my-run/model.pt --num-test 200 --show 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from distillab.data.arith import DEFAULT_FORMAT, FORMATS, TOKENIZER, decode, held_out_problems
from distillab.exact_match import complete, exact_match, longest_output
from distillab.models import load_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a run folder or a model file trained on data set arith")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: the run's data option format")
    parser.add_argument("--num-test", type=int, default=None, help="default: the run's data option num_test")
    parser.add_argument("--batch-size", type=int, default=512, help="prompts generated at once")
    parser.add_argument("--show", type=int, default=0, help="print the first SHOW problems with what the model wrote")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    loaded = load_model(args.model)
    if loaded.data != "arith" or (loaded.tokenizer or {}).get("hash") != TOKENIZER["hash"]:
        raise SystemExit(f"{args.model} was trained on data set {loaded.data!r}, not on arith's characters")
    options = {**loaded.data_options, **({"num_test": args.num_test} if args.num_test else {})}
    fmt = args.format or options.get("format", DEFAULT_FORMAT)
    problems = held_out_problems(options)
    model = loaded.model.to(torch.device(args.device))
    score = exact_match(model, problems, format=fmt, batch_size=args.batch_size)
    shown = problems[: args.show]
    if shown:
        for p, out in zip(shown, complete(model, [p.prompt_ids() for p in shown], longest_output(shown, fmt))):
            print(f"{p.prompt}{decode(out)!r}  (true answer {p.answer})")
    print(f"{loaded.label}: exact match {score:.2f}% on {len(problems)} held-out problems (format {fmt})")
    return score


if __name__ == "__main__":
    main()
