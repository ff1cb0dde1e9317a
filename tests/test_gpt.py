"""The GPT zoo: shapes, causality, tied weights, padding, KV-cached generation, feature taps, one training run."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from distillab.features import FeatureTaps, resolve_feature
from distillab.models import MODELS, count_parameters, create_model, model_kind
from distillab.models import gpt as gpt_module
from distillab.models.gpt import GPT, gpt_parameter_count

GPTS = [n for n in MODELS.names() if MODELS.get(n).__module__ == gpt_module.__name__]  # the sizes registered here
VOCAB = 11


def tiny(context: int = 16, **kwargs) -> GPT:
    torch.manual_seed(0)
    options = {"d_model": 16, "n_layers": 2, "n_heads": 2, **kwargs}
    return GPT(VOCAB, context=context, **options).eval()


def ids(n: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def test_the_sizes_are_registered_as_language_models_built_with_num_classes():
    assert GPTS == ["gpt_nano", "gpt_micro", "gpt_mini", "gpt_small", "gpt_medium"]
    assert all(MODELS.entry(n).meta.get("task") == "lm" for n in GPTS)
    assert all(model_kind(n) == "classifier" for n in GPTS)  # create_model passes num_classes (the vocabulary)


@pytest.mark.parametrize("name", GPTS)
def test_described_parameter_counts_are_the_models(name):
    with torch.device("meta"):  # counts without allocating or initialising
        model = create_model(name, num_classes=256)
    count = count_parameters(model)
    blocks = len(model.blocks)
    assert count == gpt_parameter_count(256, 256, model.embedding_dim, blocks)
    assert f"{count:,} parameters at vocab 256, context 256" in MODELS.entry(name).description
    assert re.search(rf"^{name}\s+{model.embedding_dim}\s+{blocks}\s+\d+\s+{count:,}$", gpt_module.__doc__, re.M)


def test_create_gpt_nano():
    model = create_model("gpt_nano", num_classes=256)
    assert count_parameters(model) == 132_864 and model.context == 256 and model.input_shape == (256,)
    small = create_model("gpt_nano", num_classes=50, context=32, d_model=32, n_layers=1, n_heads=4, dropout=0.1)
    assert small.context == 32 and len(small.blocks) == 1 and small.blocks[0].attn.n_heads == 4
    assert small(ids(2, 32)).shape == (2, 32, 50)


def test_forward_shape_and_finite():
    out = tiny()(ids(3, 9))
    assert out.shape == (3, 9, VOCAB) and torch.isfinite(out).all()


def test_causality():
    model, x = tiny(), ids(2, 12)
    j = 7
    changed = x.clone()
    changed[:, j] = (changed[:, j] + 1) % VOCAB
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, j:], b[:, j:])


def test_tied_weights_and_parameter_formula():
    model = tiny(mlp_ratio=3)
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.bias is None
    assert count_parameters(model) == gpt_parameter_count(VOCAB, 16, 16, 2, mlp_ratio=3)
    assert {"wte.weight", "lm_head.weight"} <= set(model.state_dict())  # both keys saved; loading re-ties them


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = GPT(VOCAB, context=64, d_model=256, n_layers=8, n_heads=4)
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.blocks[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)  # 0.02/sqrt(2*8)
    assert model.blocks[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not model.blocks[0].attn.c_attn.bias.any()


def test_context_overflow_is_explained():
    model = tiny(context=8)
    with pytest.raises(ValueError, match=r"9 tokens.*context of 8.*shorter data block.*larger context"):
        model(ids(1, 9))
    with pytest.raises(ValueError, match=r"5 tokens plus 4 new.*context of 8"):
        model.generate(ids(1, 5), 4)
    with pytest.raises(TypeError, match="token ids"):
        model(torch.zeros(1, 4))


def test_left_padding_gives_the_unpadded_logits():
    model = tiny()
    short, full = ids(1, 5, seed=2), ids(1, 9, seed=3)
    batch = torch.cat((torch.cat((torch.zeros(1, 4, dtype=torch.long), short), dim=1), full))
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    out = model(batch, attention_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 4:], model(short)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], model(full)[0], rtol=0, atol=1e-5)


def full_forward_greedy(model: GPT, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        prompt = torch.cat((prompt, model(prompt)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return prompt


def test_cached_greedy_generation_equals_full_forward():
    model, prompt = tiny(context=24), ids(3, 5)
    assert torch.equal(model.generate(prompt, 12, greedy=True), full_forward_greedy(model, prompt, 12))


def test_cached_generation_of_a_left_padded_batch_equals_each_row_alone():
    model = tiny(context=24)
    short, full = ids(1, 3, seed=4), ids(1, 6, seed=5)
    batch = torch.cat((torch.cat((torch.zeros(1, 3, dtype=torch.long), short), dim=1), full))
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    out = model.generate(batch, 8, greedy=True, attention_mask=mask)
    assert torch.equal(out[0, 3:], full_forward_greedy(model, short, 8)[0])
    assert torch.equal(out[1], full_forward_greedy(model, full, 8)[0])


def test_seeded_sampling_is_reproducible():
    model, prompt = tiny(context=32), ids(2, 4)

    def sample(seed: int, **kwargs) -> torch.Tensor:
        return model.generate(prompt, 20, temperature=0.8, generator=torch.Generator().manual_seed(seed), **kwargs)

    first = sample(0)
    assert first.shape == (2, 24) and torch.equal(first[:, :4], prompt)
    assert torch.equal(first, sample(0))
    assert not torch.equal(first, sample(1))
    assert torch.equal(sample(0, top_k=1), model.generate(prompt, 20, greedy=True))


def test_rows_that_produce_eos_keep_emitting_it():
    model, prompt = tiny(context=32), ids(3, 4)

    def sample(rows: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
        return model.generate(rows, 12, temperature=2.0, generator=torch.Generator().manual_seed(0), eos_id=eos_id)

    plain = sample(prompt)
    eos = int(plain[0, 4])  # row 0's first new token, which it samples again later only by chance
    assert not (plain[0, 5:] == eos).all()
    out = sample(prompt, eos)
    assert out.shape == (3, 16) and torch.equal(out[:, :5], plain[:, :5]) and (out[0, 4:] == eos).all()
    for row in out[:, 4:]:  # after its first eos, a row emits nothing else
        hits = (row == eos).nonzero()
        assert not len(hits) or (row[int(hits[0]):] == eos).all()
    assert torch.equal(sample(prompt[:1], eos), out[:1])  # a batch that has all stopped ends early, padded with eos


def test_feature_taps():
    model, x = tiny(n_layers=3), ids(2, 7)
    names = {"first": "stage0", "last": "stage-1", "embedding": "embedding"}
    taps = {k: resolve_feature(model, v) for k, v in names.items()}
    assert taps == {"first": "blocks.0", "last": "blocks.2", "embedding": "lm_head:input"}
    with FeatureTaps(model, taps) as t:
        logits = model(x)
        feats = t.pop()
    assert all(f.shape == (2, 7, model.embedding_dim) for f in feats.values())
    torch.testing.assert_close(model.lm_head(feats["embedding"]), logits)
    torch.testing.assert_close(model.ln_f(feats["last"]), feats["embedding"])


def test_training_on_a_periodic_sequence_lowers_the_loss():
    model = tiny(context=32).train()
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    stream = pattern.repeat(8)
    batch = torch.stack([stream[i:i + 33] for i in range(4)])  # (4, 33): inputs and next-token targets
    x, y = batch[:, :-1], batch[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses
