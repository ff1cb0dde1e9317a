"""Language-model runs through the one engine: token-level KD end to end on the stdlib corpus, metrics per
real token (perplexity, bits per byte), resume, and the refusals that must come before any training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distillab.config import ConfigError, load_config
from distillab.core.files import load_checkpoint
from distillab.data import build_dataset
from distillab.engine.trainer import Trainer
from distillab.plots import read_metrics
from distillab.runner import find_config, run

# a seconds-long run: 24 KB of text in blocks of 32 bytes, the smallest GPT with a context of 32
TINY = ["data.options.max_bytes=24000", "data.options.block=32", "train.batch_size=16", "train.eval_batch_size=64",
        "train.progress=false", "train.tensorboard=false", "train.device=cpu"]
SMALL_GPT = {"context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2}


def _opts(section: str, options: dict = SMALL_GPT) -> list[str]:
    return [f"{section}.options.{k}={v}" for k, v in options.items()]


def _cfg(tmp_path, path: str, *extra: str, epochs: int = 1):
    return load_config(find_config(path), [f"out_dir={tmp_path / 'runs'}", f"train.epochs={epochs}", *TINY, *extra])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny gpt_nano teacher trained one epoch on bytes; its model file."""
    tmp = tmp_path_factory.mktemp("lm_teacher")
    cfg = load_config(find_config("configs/lm/teacher_gpt.yaml"),
                      [f"out_dir={tmp}", "train.epochs=1", "model.arch=gpt_nano", *TINY,
                       *_opts("model", {**SMALL_GPT, "d_model": 48})])
    summary, folder = run(cfg)
    return folder / "model.pt"


def _kd(tmp_path, teacher, *extra, epochs=1, method="lm_fkl"):
    return _cfg(tmp_path, "configs/lm/kd_gpt.yaml", "teacher.config=null", f"teacher.checkpoint={teacher}",
                "student.arch=gpt_nano", *_opts("student"), f"method.name={method}", *extra, epochs=epochs)


def test_token_kd_end_to_end_reports_per_token_metrics(tmp_path, teacher):
    summary, folder = run(_kd(tmp_path, teacher, "name=kd", epochs=2))
    rows = read_metrics(folder / "metrics.csv")
    assert len(rows) == 2
    last = rows[-1]
    # byte tokens: every scored token is one byte, so bits per byte is the loss in bits, perplexity its exp
    assert last["test/bpb"] == pytest.approx(last["test/loss"] / math.log(2), rel=1e-6)
    assert last["test/ppl"] == pytest.approx(math.exp(last["test/loss"]), rel=1e-6)
    assert "train/token_kl" in last and "train/ce" in last and last["throughput/tokens_per_s"] > 0
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["test_bpb"] == pytest.approx(last["test/bpb"]) and saved["tokenizer"]["name"] == "bytes"
    assert torch.load(folder / "model.pt", weights_only=False)["tokenizer"]["vocab_size"] == 256
    # the first epoch's distillation lowers the KL term
    assert rows[1]["train/token_kl"] < rows[0]["train/token_kl"]


def test_held_out_metrics_match_an_independent_count(tmp_path, teacher):
    """Test loss, top-1 and bits per byte recomputed by hand over the evaluation blocks, padding excluded."""
    summary, folder = run(_cfg(tmp_path, "configs/lm/student_baseline.yaml", "name=check", "student.arch=gpt_nano",
                               *_opts("student"), "data.options.tokenizer=bpe", "data.options.vocab_size=300"))
    cfg = load_config(folder / "config.yaml")
    data = build_dataset(cfg.data.name, cfg.data.root, False, **cfg.data.options)
    from distillab.models import load_model

    model = load_model(folder / "model.pt").model.eval()
    x, y = data.test.inputs, data.test.labels
    with torch.no_grad():
        logits = model(x).float()
    keep = y != -100
    nats = torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum")
    nbytes = data.token_bytes[y[keep]].sum()
    assert bool((~keep).any()), "the check needs padded blocks"
    assert summary["test_loss"] == pytest.approx(float(nats / keep.sum()), rel=1e-5)
    assert summary["test_bpb"] == pytest.approx(float(nats / (math.log(2) * nbytes)), rel=1e-5)
    assert summary["test_top1"] == pytest.approx(float(100 * (logits.argmax(-1)[keep] == y[keep]).float().mean()),
                                                 abs=1e-4)


def test_resume_is_bit_identical(tmp_path, teacher, monkeypatch):
    full, full_dir = run(_kd(tmp_path, teacher, "name=full", method="lm_jsd", epochs=2))
    cut, resumed = _interrupted_in_epoch_2_then_resumed(
        monkeypatch, lambda: _kd(tmp_path, teacher, "name=cut", method="lm_jsd", epochs=2), tmp_path / "runs" / "cut")
    a, b = torch.load(full_dir / "model.pt")["model"], torch.load(cut / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_bpb"] == full["test_bpb"]


def _interrupted_in_epoch_2_then_resumed(monkeypatch, cfg, cut):
    """Run ``cfg()`` into ``cut`` with a Ctrl-C at the start of epoch 2, then resume it: (folder, summary)."""
    original = Trainer.train_epoch

    def crash_at_2(self, epoch, progress=None, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, progress, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", crash_at_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg())
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 1
    resumed, _ = run(cfg(), resume=cut)
    return cut, resumed


def test_vocabulary_mismatch_is_refused_before_training(tmp_path, teacher):
    cfg = _kd(tmp_path, teacher, "name=bpe", "data.options.tokenizer=bpe", "data.options.vocab_size=300")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    msg = str(err.value)
    assert "'bytes' (vocabulary 256" in msg and "'bpe' (vocabulary" in msg and "data.options.tokenizer=bytes" in msg
    assert not (tmp_path / "runs" / "bpe").exists()


def test_a_tokenizer_change_under_a_checkpoint_is_refused(tmp_path, teacher):
    other = tmp_path / "other.pt"
    record = torch.load(teacher, weights_only=False)
    record["tokenizer"] = {**record["tokenizer"], "hash": "0" * 64, "name": "bytes-v0"}  # same size, other ids
    torch.save(record, other)
    with pytest.raises(ConfigError, match="token ids would mean other text"):
        run(_kd(tmp_path, other, "name=x"))


def test_block_longer_than_the_context_is_refused_before_reading_data(tmp_path, teacher, monkeypatch):
    import distillab.runner as runner

    monkeypatch.setattr(runner, "build_data", lambda cfg: pytest.fail("data read before the plan was checked"))
    with pytest.raises(ConfigError, match=r"block is 64 tokens but student \(gpt_nano\) has a context of 32"):
        run(_kd(tmp_path, teacher, "data.options.block=64"))


def test_classifier_terms_and_models_are_refused_on_text(tmp_path, teacher):
    with pytest.raises(ConfigError, match="method term 'kd'.*token_kl"):
        run(_kd(tmp_path, teacher, method="kd"))
    with pytest.raises(ConfigError, match="'cnn1d' is a classifier"):
        run(_cfg(tmp_path, "configs/lm/student_baseline.yaml", "student.arch=cnn1d",
                 "student.options={}"))


def test_an_empty_corpus_folder_is_refused(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "picture.png").write_bytes(b"\x89PNG")
    cfg = _cfg(tmp_path, "configs/lm/student_baseline.yaml", "data.name=textfiles", f"data.root={tmp_path / 'texts'}",
               "data.options.max_bytes=null", "student.arch=gpt_nano", *_opts("student"), "name=empty")
    with pytest.raises(Exception, match="no text files|\\.txt"):
        run(cfg)
    assert not (tmp_path / "runs" / "empty").exists()


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, teacher):
    """torchrun with 2 CPU processes (gloo) against one process: a GPT has no batch statistics, so the runs
    differ only by the order of floating-point sums (as tests/test_ddp.py's MLP runs). SGD: AdamW divides each
    gradient by its running scale, so the sum-order noise of near-zero gradients (rare tokens' embedding rows)
    becomes steps of size lr. Each rank averages over its own real tokens (as TRL and DistillKit do): with
    padded blocks the ranks' weights differ slightly from one process's, within this tolerance here."""
    import yaml

    from test_ddp import TOL, launch

    def write(folder, batch):
        cfg = _kd(tmp_path, teacher, f"train.batch_size={batch}", f"out_dir={folder / 'runs'}", "train.threads=1",
                  "optim.name=sgd",
                  method="lm_jsd", epochs=1).model_dump(mode="json")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        return folder / "config.yaml"

    ddp = launch(write(tmp_path / "ddp", 8), tmp_path / "ddp" / "out")
    single = launch(write(tmp_path / "one", 16), tmp_path / "one" / "out", processes=1)
    for key, value in single[0]["model"].items():
        assert torch.equal(ddp[0]["model"][key], ddp[1]["model"][key]), f"ranks differ in {key}"
        assert torch.allclose(ddp[0]["model"][key], value, **TOL), key
    s_ddp, s_one = ddp[0]["summary"], single[0]["summary"]
    assert s_ddp["test_bpb"] == pytest.approx(s_one["test_bpb"], abs=1e-3)


def test_gkd_with_no_on_policy_steps_is_the_jsd_run(tmp_path, teacher):
    _, a = run(_kd(tmp_path, teacher, "name=jsd", method="lm_jsd"))
    _, b = run(_kd(tmp_path, teacher, "name=gkd0", "method.params.gkd.lmbda=0", method="gkd"))
    wa, wb = torch.load(a / "model.pt")["model"], torch.load(b / "model.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_metrics(b / "metrics.csv")[-1]["train/on_policy"] == 0


def test_gkd_on_policy_steps_score_the_students_samples_only(tmp_path, teacher, monkeypatch):
    from distillab.losses import lm_policy
    from distillab.models.gpt import GPT

    seen = []
    original = lm_policy.token_jsd_loss if hasattr(lm_policy, "token_jsd_loss") else None
    generate = GPT.generate

    def spy(self, ids, max_new_tokens, **kwargs):
        seen.append((self.d_model if hasattr(self, "d_model") else None, ids.shape[1], max_new_tokens))
        return generate(self, ids, max_new_tokens, **kwargs)

    monkeypatch.setattr(GPT, "generate", spy)
    pairs = []
    cont = lm_policy.continuation

    def record(model, prompt, new_tokens, term, generator):
        x, y = cont(model, prompt, new_tokens, term, generator)
        pairs.append((prompt, x, y))
        return x, y

    monkeypatch.setattr(lm_policy, "continuation", record)
    summary, folder = run(_kd(tmp_path, teacher, "name=gkd1", "method.params.gkd.lmbda=1",
                              "method.params.gkd.prompt_len=8", method="gkd"))
    del original
    assert read_metrics(folder / "metrics.csv")[-1]["train/on_policy"] == 1
    assert pairs and len(seen) == len(pairs)
    prompt, x, y = pairs[0]
    assert x.shape[1] == 8 + 24 - 1 and torch.equal(x[:, :8], prompt)  # block 32: 24 new tokens after 8
    assert bool((y[:, :7] == -100).all()) and bool((y[:, 7:] >= 0).all())
    assert torch.equal(y[:, 7:-1], x[:, 8:])  # labels are the next sampled token
    assert read_metrics(folder / "metrics.csv")[-1]["train/gen_s"] > 0


def test_gkd_seq_kd_samples_from_the_teacher_and_resumes_bit_identically(tmp_path, teacher, monkeypatch):
    from distillab.losses import lm_policy

    calls = []
    cont = lm_policy.continuation

    def record(model, prompt, new_tokens, term, generator):
        calls.append(model.training)
        return cont(model, prompt, new_tokens, term, generator)

    monkeypatch.setattr(lm_policy, "continuation", record)
    extra = ("method.params.gkd.seq_kd=true", "method.params.gkd.prompt_len=16")
    full, full_dir = run(_kd(tmp_path, teacher, "name=full", *extra, method="gkd", epochs=2))
    steps = len(read_metrics(full_dir / "metrics.csv"))
    assert len(calls) > steps  # a teacher sample every step, and the student's in some
    cut, _ = _interrupted_in_epoch_2_then_resumed(
        monkeypatch, lambda: _kd(tmp_path, teacher, "name=cut", *extra, method="gkd", epochs=2), tmp_path / "runs" / "cut")
    a, b = torch.load(full_dir / "model.pt")["model"], torch.load(cut / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gkd_prompt_longer_than_the_block_is_refused(tmp_path, teacher):
    with pytest.raises(ConfigError, match="prompt_len 40 leaves no continuation in blocks of 32"):
        run(_kd(tmp_path, teacher, "method.params.gkd.prompt_len=40", "method.params.gkd.lmbda=1", method="gkd"))


def test_teacher_cache_runs_the_teacher_once_per_block_and_keeps_the_run(tmp_path, teacher):
    """``train.teacher_cache`` on a language model: one (block, vocabulary) row of fp32 logits per block, so
    the second epoch reads every teacher row and trains as the uncached run does (the teacher's numbers
    recomputed on another batch composition may differ in the last bits only)."""
    _, plain = run(_kd(tmp_path, teacher, "name=plain", method="lm_jsd", epochs=2))
    _, cached = run(_kd(tmp_path, teacher, "name=cached", "train.teacher_cache=true", method="lm_jsd", epochs=2))
    rows = read_metrics(cached / "metrics.csv")
    assert [r["teacher_cache/hit_rate"] for r in rows] == [0.0, 1.0]
    a, b = torch.load(plain / "model.pt")["model"], torch.load(cached / "model.pt")["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    first = read_metrics(plain / "metrics.csv")
    assert rows[-1]["train/token_jsd"] == pytest.approx(first[-1]["train/token_jsd"], rel=1e-5)


def test_on_policy_steps_never_run_or_cache_the_teacher_on_the_corpus_batch(tmp_path, teacher, monkeypatch):
    """The teacher runs when a step first reads it: an on-policy step replaces its batch first, so the
    teacher runs once per step, on the student's samples, which the cache never stores."""
    from distillab.engine.frozen import FrozenModels

    calls = []
    outputs = FrozenModels.outputs

    def spy(self, fields, idx, keys, taps, *, cached=True):
        calls.append(cached)
        return outputs(self, fields, idx, keys, taps, cached=cached)

    monkeypatch.setattr(FrozenModels, "outputs", spy)
    _, folder = run(_kd(tmp_path, teacher, "name=gkd1", "method.params.gkd.lmbda=1", "train.teacher_cache=true",
                        "method.params.gkd.prompt_len=8", method="gkd"))
    steps = math.ceil(len(build_dataset("stdlib", None, False, max_bytes=24000, block=32).train) / 16)
    assert calls == [False] * steps
    assert read_metrics(folder / "metrics.csv")[-1]["teacher_cache/hit_rate"] == 0.0
