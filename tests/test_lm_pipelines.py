"""Language-model pipelines: sequence-level KD (the teacher's continuations as a data set) and offline KD
(the teacher's stored top-k log-probabilities), their data steps and the top-k loss."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from distillab.data import build_dataset
from distillab.losses.lm import token_kl_loss
from distillab.losses.lm_offline import topk_kl_loss
from distillab.models import create_model
from distillab.pipeline import load_pipeline, run_pipeline
from distillab.pipeline_lm import beam_search, topk_logprobs

GPT = {"context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2}
TINY = ["data.options.max_bytes=24000", "data.options.block=32", "train.batch_size=16", "train.epochs=1",
        "train.progress=false", "train.tensorboard=false", "train.device=cpu"]


def test_topk_kl_is_exact_at_full_k_and_a_coarsening_below():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11) * 2
    y = torch.randint(0, 11, (2, 5))
    y[1, 3:] = -100
    full = token_kl_loss(s, t, y, 1.0)
    values, ids = topk_logprobs(t, 11, torch.float32)
    assert float(topk_kl_loss(s, values, ids, y)) == pytest.approx(float(full), rel=1e-6)
    values16, ids16 = topk_logprobs(t, 11, torch.float16)
    assert float(topk_kl_loss(s, values16, ids16, y)) == pytest.approx(float(full), rel=1e-3)
    for k in (1, 4, 8):  # the KL of coarsened distributions never exceeds the full KL
        v, i = topk_logprobs(t, k, torch.float32)
        assert float(topk_kl_loss(s, v, i, y)) <= float(full) + 1e-6


def test_topk_kl_by_hand_with_a_tail_bucket():
    s = torch.tensor([[[1.0, 0.0, -1.0]]])
    t = torch.tensor([[[2.0, 0.5, 0.0]]])
    p, q = t.softmax(-1)[0, 0], s.softmax(-1)[0, 0]
    # top-1 of the teacher is token 0; the tail holds tokens 1 and 2 on both sides
    expected = p[0] * math.log(p[0] / q[0]) + (1 - p[0]) * math.log((1 - p[0]) / (1 - q[0]))
    v, i = topk_logprobs(t, 1, torch.float32)
    got = topk_kl_loss(s, v, i, torch.tensor([[1]]))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    s.requires_grad_(True)
    topk_kl_loss(s, v, i, torch.tensor([[1]])).backward()
    assert torch.isfinite(s.grad).all()


def test_beam_search_with_one_beam_is_greedy():
    torch.manual_seed(0)
    model = create_model("gpt_nano", num_classes=50, **GPT).eval()
    prompt = torch.randint(0, 50, (3, 5))
    greedy = model.generate(prompt, 6, greedy=True)
    assert torch.equal(beam_search(model, prompt, 6, beams=1), greedy)
    wide = beam_search(model, prompt, 6, beams=4)
    assert wide.shape == (3, 11) and torch.equal(wide[:, :5], prompt)

    def score(seq):
        logp = torch.log_softmax(model(seq[:, :-1]).float(), -1)
        return logp[:, 4:].gather(-1, seq[:, 5:].unsqueeze(-1)).sum((1, 2))

    assert bool((score(wide) >= score(greedy) - 1e-5).all())  # a wider beam never scores lower


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm_pipeline")
    gpt = yaml.safe_dump(GPT, default_flow_style=True).strip()
    spec = {
        "description": "tiny sequence-level and offline KD", "vars": {"seed": 0}, "result": "student",
        "overrides": TINY,
        "steps": [
            {"name": "teacher", "command": "train-teacher", "config": "configs/lm/teacher_gpt.yaml",
             "overrides": ["model.arch=gpt_nano", "model.options={context: 32, d_model: 48, n_layers: 1, n_heads: 2}"]},
            {"name": "generate", "command": "lm_generate",
             "params": {"teacher": "${teacher.run}", "prompt_len": 8, "decoding": "sample", "temperature": 0.8,
                        "batch_size": 300}},
            {"name": "student", "command": "distill", "config": "configs/lm/student_baseline.yaml",
             "overrides": ["student.arch=gpt_nano", f"student.options={gpt}", "data.name=token_blocks",
                           "data.options={path: ${generate.data}}"]},
            {"name": "logits", "command": "teacher_logits", "params": {"teacher": "${teacher.run}", "k": 256}},
            {"name": "offline", "command": "distill", "config": "configs/lm/student_baseline.yaml",
             "overrides": ["student.arch=gpt_nano", f"student.options={gpt}", "method.name=lm_offline",
                           "data.name=token_blocks", "data.options={path: ${logits.data}}"]},
            {"name": "online", "command": "distill", "config": "configs/lm/kd_gpt.yaml",
             "overrides": ["student.arch=gpt_nano", f"student.options={gpt}", "teacher.config=null",
                           "teacher.checkpoint=${teacher.model}"]},
        ],
    }
    path = tmp / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_pipeline(load_pipeline(path), out=tmp / "out")
    return tmp / "out", result


def test_sequence_level_kd_trains_on_the_teachers_text_and_scores_real_text(pipeline):
    out, _ = pipeline
    gen = build_dataset("token_blocks", None, False, path=str(out / "generate" / "data"))
    corpus = build_dataset("stdlib", None, False, max_bytes=24000, block=32)
    assert gen.tokenizer == corpus.tokenizer
    assert torch.equal(gen.train.inputs[:, :8], corpus.train.inputs[:, :8])  # the prompts are the corpus's
    assert bool((gen.train.labels[:, :7] == -100).all()) and bool((gen.train.labels[:, 7:-1] >= 0).all())
    assert not torch.equal(gen.train.inputs[:, 8:], corpus.train.inputs[:, 8:])  # the rest is the teacher's
    assert torch.equal(gen.test.inputs, corpus.test.inputs) and torch.equal(gen.test.labels, corpus.test.labels)


def test_offline_kd_at_full_k_equals_online_kd(pipeline):
    """k = vocabulary: the loss on the stored float16 log-probabilities is the online forward KL (the teacher
    run live) within float16 rounding, on the training blocks a student reads."""
    from distillab.models import load_model

    out, _ = pipeline
    data = build_dataset("token_blocks", None, False, path=str(out / "logits" / "data"))
    assert data.train.fields["topk_ids"].dtype == torch.int16
    assert data.train.fields["topk_logprobs"].dtype == torch.float16
    teacher = load_model(out / "teacher").model.eval()
    student = load_model(out / "offline").model.eval()
    x, y = data.train.inputs[:64], data.train.labels[:64]
    with torch.no_grad():
        s_logits, t_logits = student(x), teacher(x)
    online = token_kl_loss(s_logits, t_logits, y, 1.0)
    offline = topk_kl_loss(s_logits, data.train.fields["topk_logprobs"][:64], data.train.fields["topk_ids"][:64], y)
    assert float(offline) == pytest.approx(float(online), rel=2e-3)
    # and the offline run trained on it: its KL term fell below the untrained student's
    assert float(offline) < float(token_kl_loss(torch.zeros_like(s_logits), t_logits, y, 1.0))


def test_a_vocabulary_mismatch_is_refused_by_the_data_steps(pipeline, tmp_path):
    from distillab.config import ConfigError
    from distillab.pipeline import StepContext
    from distillab.pipeline_lm import lm_generate_step

    out, _ = pipeline
    record = torch.load(out / "teacher" / "model.pt", weights_only=False)
    record["tokenizer"] = {**record["tokenizer"], "hash": "f" * 64}
    torch.save(record, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="token ids would mean other text"):
        lm_generate_step({"teacher": str(tmp_path / "other.pt")}, tmp_path, StepContext(report=print))
