"""hf_causal_lm: a transformers causal LM in the zoo. Logits equal the raw model's, taps give token states, the
state dict round-trips through the factory, generation, a KD run each way round with the GPT zoo, and the
refusals (vocabulary, folder, missing transformers)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from distillab.config import load_config  # noqa: E402
from distillab.features import FeatureTaps, probe_shapes, resolve_feature  # noqa: E402
from distillab.models import create_model, load_model  # noqa: E402
from distillab.models.hf import HFFolderMissing, HFOptionError  # noqa: E402
from distillab.runner import find_config, run  # noqa: E402

VOCAB = 256  # bytes, as the stdlib data set's default tokenizer
# a 2-layer GPT-2 without dropout (GPT-2's config defaults to 0.1), 32 positions
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32, "resid_pdrop": 0.0,
        "embd_pdrop": 0.0, "attn_pdrop": 0.0}
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32}
# a seconds-long run on 8 KB of stdlib text in blocks of 32 bytes (tests/test_lm_runs.py's TINY)
TINY = ["data.options.max_bytes=8000", "data.options.block=32", "train.batch_size=16", "train.eval_batch_size=64",
        "train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.epochs=1"]
SMALL_GPT = {"context": 32, "d_model": 32, "n_layers": 1, "n_heads": 2}


def build(config: dict = GPT2, seed: int = 0, **options):
    torch.manual_seed(seed)
    return create_model("hf_causal_lm", num_classes=VOCAB, config=config, **options).eval()


def ids(n: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def test_logits_are_the_raw_models():
    model = build()
    raw = transformers.AutoModelForCausalLM.from_config(model.model.config).eval()
    raw.load_state_dict(model.model.state_dict())
    x = ids(3, 20)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 20, VOCAB) and out.dtype == torch.float32
        assert torch.equal(out, raw(x).logits)
    assert model.context == 32 and model.input_shape == (32,) and model.num_classes == VOCAB


@pytest.mark.parametrize("config,layers", [(GPT2, "model.transformer.h"), (LLAMA, "model.model.layers")])
def test_feature_stages_are_the_decoder_layers_and_taps_give_token_states(config, layers):
    model = build(config)
    width = model.embedding_dim
    n_layers = config.get("n_layer", config.get("num_hidden_layers"))
    assert [s.name for s in model.feature_info] == [f"{layers}.{i}" for i in range(n_layers)]
    assert model.head == "model.lm_head" and model.embedding_tap == "model.lm_head:input"
    names = ["stage0", "stage-1", "embedding"]
    taps = {n: resolve_feature(model, n) for n in names}
    with FeatureTaps(model, taps) as t, torch.no_grad():
        model(ids(3, 10))
        feats = t.pop()
    assert {n: tuple(f.shape) for n, f in feats.items()} == {n: (3, 10, width) for n in names}
    assert {n: tuple(s) for n, s in probe_shapes(model, taps, (16,), dtype=torch.long).items()} == \
        {n: (2, 16, width) for n in names}


def test_left_padding_gives_the_unpadded_rows_logits():
    model = build()
    x = ids(2, 12)
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    with torch.no_grad():
        padded = model(x, attention_mask=mask)
        alone = model(x[1:, 5:])
    torch.testing.assert_close(padded[1, 5:], alone[0], rtol=1e-5, atol=1e-5)


def test_state_dict_round_trips_through_the_factory(tmp_path):
    model = build(seed=3)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    again = build(seed=4)  # other random weights until loaded
    again.load_state_dict(torch.load(tmp_path / "weights.pt"), strict=True)
    x = ids(2, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_a_saved_folder_loads_by_path_without_the_hub(tmp_path):
    model = build(LLAMA)
    model.model.save_pretrained(tmp_path / "llama")
    loaded = create_model("hf_causal_lm", num_classes=VOCAB, path=str(tmp_path / "llama"), context=16).eval()
    x = ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.context == 16 and loaded.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ValueError, match="longer than the model's context of 16"):
        loaded(ids(1, 17))


def test_generate_greedy_matches_the_argmax_and_sampling_follows_the_generator():
    model = build()
    prompt = ids(2, 5)
    out = model.generate(prompt, 6, greedy=True)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        step = model(out[:, :-1]).argmax(-1)[:, 4:]  # greedy: each new token is the argmax given those before
    assert torch.equal(step, out[:, 5:])
    a = model.generate(prompt, 8, top_k=5, generator=torch.Generator().manual_seed(7))
    b = model.generate(prompt, 8, top_k=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == (2, 13)
    eos = int(out[0, 5])  # row 0's first greedy token: that row stops at once and is padded with it
    stopped = model.generate(prompt, 6, greedy=True, eos_id=eos)
    assert stopped.shape == (2, 11) and bool((stopped[0, 5:] == eos).all())
    with pytest.raises(ValueError, match="exceeds the model's context of 32"):
        model.generate(prompt, 28)


def test_vocabulary_mismatch_names_both_and_the_fix():
    with pytest.raises(HFOptionError) as err:
        create_model("hf_causal_lm", num_classes=VOCAB, config={**GPT2, "vocab_size": 300})
    msg = str(err.value)
    assert "vocabulary is 300" in msg and "is 256" in msg and "data.options.vocab_size=300" in msg
    assert isinstance(err.value, ValueError)


def test_missing_folder_and_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(HFFolderMissing, match="does not exist.*save_pretrained"):
        create_model("hf_causal_lm", num_classes=VOCAB, path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        create_model("hf_causal_lm", num_classes=VOCAB, path=str(tmp_path / "empty"))
    with pytest.raises(HFOptionError, match="exactly one of"):
        create_model("hf_causal_lm", num_classes=VOCAB)
    with pytest.raises(HFOptionError, match="context is 64 but .* 1 to 32"):
        create_model("hf_causal_lm", num_classes=VOCAB, config=GPT2, context=64)


def test_distillab_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import distillab.models as m, distillab.runner\n"
            "from distillab.models.hf import TransformersMissing\n"
            "try:\n    m.create_model('hf_causal_lm', num_classes=256, config={'model_type': 'gpt2'})\n"
            "except TransformersMissing as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "refused: model 'hf_causal_lm' needs the transformers package: pip install 'distillab[hf]'" in out


def _options(section: str, options: dict) -> list[str]:
    return [f"{section}.options.{k}={v}" for k, v in options.items()]


def _flow(config: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in config.items()) + "}"


def _teacher_file(path, model, arch: str, options: dict):
    """A model file as a run writes it, for a teacher that was never trained (the run is what is tested)."""
    torch.save({"model": model.state_dict(), "arch": arch, "options": options, "num_classes": VOCAB}, path)
    return path


def test_kd_run_hf_student_from_a_gpt_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = _teacher_file(tmp_path / "teacher.pt", create_model("gpt_nano", VOCAB, **SMALL_GPT), "gpt_nano",
                            SMALL_GPT)
    cfg = load_config(find_config("configs/lm/kd_gpt.yaml"),
                      [f"out_dir={tmp_path / 'runs'}", "name=hf", *TINY, "teacher.config=null",
                       f"teacher.checkpoint={teacher}", "student.arch=hf_causal_lm",
                       f"student.options={{config: {_flow(GPT2)}}}", "method.name=lm_jsd"])
    summary, folder = run(cfg)
    assert summary["test_loss"] > 0 and summary["student"] == "hf_causal_lm"
    loaded = load_model(folder / "model.pt")  # rebuilt by the factory from the recorded options, loaded strictly
    assert loaded.arch == "hf_causal_lm" and loaded.options == {"config": GPT2} and loaded.num_classes == VOCAB
    assert loaded.tokenizer["name"] == "bytes"


def test_kd_run_gpt_student_from_an_hf_teacher_in_a_folder(tmp_path):
    model = build(seed=5)
    model.model.save_pretrained(tmp_path / "hf_teacher")
    options = {"path": str(tmp_path / "hf_teacher")}
    teacher = _teacher_file(tmp_path / "teacher.pt", model, "hf_causal_lm", options)
    cfg = load_config(find_config("configs/lm/kd_gpt.yaml"),
                      [f"out_dir={tmp_path / 'runs'}", "name=gpt", *TINY, "teacher.config=null",
                       f"teacher.checkpoint={teacher}", "student.arch=gpt_nano", *_options("student", SMALL_GPT),
                       "method.name=lm_fkl"])
    summary, folder = run(cfg)
    assert summary["teacher"] == "hf_causal_lm" and summary["test_loss"] > 0


def test_a_block_longer_than_the_hf_context_is_refused_before_reading_data(tmp_path, monkeypatch):
    """The context of a Hugging Face model comes from its config (a dict, or the folder's config.json): the plan
    reads it without building the model, for a student built new and for a teacher's folder."""
    import distillab.runner as runner

    monkeypatch.setattr(runner, "build_data", lambda cfg: pytest.fail("data read before the plan was checked"))
    build(seed=5).model.save_pretrained(tmp_path / "hf_teacher")
    teacher = _teacher_file(tmp_path / "teacher.pt", build(seed=5), "hf_causal_lm",
                            {"path": str(tmp_path / "hf_teacher")})
    base = [f"out_dir={tmp_path / 'runs'}", *TINY, "data.options.block=64", "teacher.config=null",
            f"teacher.checkpoint={teacher}"]
    with pytest.raises(Exception, match=r"block is 64 tokens but teacher \(hf_causal_lm\) has a context of 32"):
        run(load_config(find_config("configs/lm/kd_gpt.yaml"), [*base, "student.arch=gpt_nano",
                                                                 *_options("student", {**SMALL_GPT, "context": 64})]))
    with pytest.raises(Exception, match=r"block is 64 tokens but student \(hf_causal_lm\) has a context of 32"):
        run(load_config(find_config("configs/lm/kd_gpt.yaml"), [*base, "student.arch=hf_causal_lm",
                                                                 f"student.options={{config: {_flow(GPT2)}}}"]))
    assert not (tmp_path / "runs").exists()


def test_a_frozen_hf_teacher_from_its_folder_needs_no_model_file(tmp_path, monkeypatch):
    """``teacher.arch: hf_causal_lm`` with ``options.path``: the folder holds the weights, so the teacher is
    built from it as it is (the same run as with a model file wrapping the same weights); a folder that is not
    a saved model is refused before any data is read."""
    model = build(seed=5)
    model.model.save_pretrained(tmp_path / "hf_teacher")
    options = {"path": str(tmp_path / "hf_teacher")}
    wrapped = _teacher_file(tmp_path / "teacher.pt", model, "hf_causal_lm", options)
    common = [*TINY, "teacher.config=null", "student.arch=gpt_nano", *_options("student", SMALL_GPT),
              "method.name=lm_fkl"]
    cfg = load_config(find_config("configs/lm/kd_gpt.yaml"),
                      [f"out_dir={tmp_path / 'runs'}", "name=folder", *common, "teacher.arch=hf_causal_lm",
                       f"teacher.options={{path: {options['path']}}}"])
    summary, folder = run(cfg)
    _, file_run = run(load_config(find_config("configs/lm/kd_gpt.yaml"),
                                  [f"out_dir={tmp_path / 'runs'}", "name=file", *common,
                                   f"teacher.checkpoint={wrapped}"]))
    a, b = torch.load(folder / "model.pt")["model"], torch.load(file_run / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["teacher"] == "hf_causal_lm"

    import distillab.runner as runner

    monkeypatch.setattr(runner, "build_data", lambda cfg: pytest.fail("data read before the plan was checked"))
    with pytest.raises(HFFolderMissing, match="does not exist"):
        run(load_config(find_config("configs/lm/kd_gpt.yaml"),
                        [f"out_dir={tmp_path / 'runs'}", "name=missing", *common, "teacher.arch=hf_causal_lm",
                         f"teacher.options={{path: {tmp_path / 'nowhere'}}}"]))
