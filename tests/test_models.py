"""The model zoo: shapes, feature stages, state-dict compatibility with RepDistiller/mdistiller, registry errors."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from distillab.features import parse_tap, probe_shapes, resolve_module
from distillab.models import MODELS, ZooModel, count_parameters, create_model, load_state_dict_compat
from distillab.registry import RegistryError

NAMES = [n for n in MODELS.names() if MODELS.entry(n).meta.get("kind", "classifier") == "classifier"
         and MODELS.entry(n).meta.get("task") != "lm"]  # language models (token ids in): tests/test_gpt.py
GENERATORS = [n for n in MODELS.names() if MODELS.entry(n).meta.get("kind") == "generator"]  # noise in, inputs out


@functools.lru_cache(maxsize=None)
def cached_model(name: str) -> ZooModel:
    torch.manual_seed(0)
    return create_model(name, 100)


def test_every_family_is_registered():
    expected = {
        "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
        "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
        "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50", "cnn1d", "cnn1d_small", "mlp1d", "mlp", "cnn_digits",
    }
    assert set(NAMES) == expected
    assert all(MODELS.entry(n).description for n in NAMES)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_finite_logits(name, num_classes):
    model = cached_model(name) if num_classes == 100 else create_model(name, num_classes)
    assert model.num_classes == num_classes
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *model.input_shape))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_feature_info_matches_probed_shapes(name):
    model = cached_model(name)
    stages = model.feature_info
    assert stages, "every model describes at least one stage"
    taps = {f"stage{i}": s.name for i, s in enumerate(stages)}
    taps |= {f"preact{i}": s.preact for i, s in enumerate(stages) if s.preact}
    taps["embedding"] = model.embedding_tap
    shapes = probe_shapes(model, taps, model.input_shape)

    spatial_in = model.input_shape[1:]
    for i, s in enumerate(stages):
        shape = shapes[f"stage{i}"]
        assert shape[:2] == (2, s.channels), (s, shape)
        if len(shape) == 2:  # a flat feature is fully reduced
            assert s.stride == math.prod(spatial_in), s
        else:
            assert tuple(shape[2:]) == tuple(math.ceil(n / s.stride) for n in spatial_in), (s, shape)
        if s.preact:
            assert shapes[f"preact{i}"] == shape, (s.preact, shapes[f"preact{i}"], shape)
    assert [s.stride for s in stages] == sorted(s.stride for s in stages), "stages go shallow to deep"
    assert shapes["embedding"] == (2, model.embedding_dim)
    head = resolve_module(model, model.head)
    assert isinstance(head, (nn.Linear, nn.Sequential))


@pytest.mark.parametrize("name", NAMES)
def test_activations_are_not_inplace(name):
    """An in-place activation would overwrite a tapped tensor (its input, or the output of the layer before it)."""
    model = cached_model(name)
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
    assert not inplace
    for s in model.feature_info:
        if s.preact and parse_tap(s.preact)[1] == "input":
            assert isinstance(resolve_module(model, parse_tap(s.preact)[0]), nn.ReLU)


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def test_resnet8_keys_are_repdistillers():
    expected = ["conv1.weight", *_bn("bn1")]
    expected += ["layer1.0.conv1.weight", *_bn("layer1.0.bn1"), "layer1.0.conv2.weight", *_bn("layer1.0.bn2")]
    for layer in ("layer2", "layer3"):
        expected += [f"{layer}.0.conv1.weight", *_bn(f"{layer}.0.bn1"), f"{layer}.0.conv2.weight",
                     *_bn(f"{layer}.0.bn2"), f"{layer}.0.downsample.0.weight", *_bn(f"{layer}.0.downsample.1")]
    expected += ["fc.weight", "fc.bias"]
    assert list(create_model("resnet8", 10).state_dict()) == expected


# (model, key, shape): spot checks of the reference layouts (RepDistiller and mdistiller share key names).
KEY_SHAPES = [
    ("resnet8x4", "layer1.0.downsample.0.weight", (64, 32, 1, 1)),
    ("resnet32", "layer3.4.bn2.running_var", (64,)),
    ("wrn_40_2", "block1.layer.0.convShortcut.weight", (32, 16, 1, 1)),
    ("wrn_40_2", "block3.layer.5.conv2.weight", (128, 128, 3, 3)),
    ("wrn_16_1", "bn1.weight", (64,)),
    ("vgg8", "block1.1.running_mean", (128,)),
    ("vgg13", "block4.4.weight", (512,)),
    ("vgg13", "block0.0.bias", (64,)),
    ("vgg13", "classifier.weight", (100, 512)),
    ("MobileNetV2", "conv1.0.weight", (16, 3, 3, 3)),
    ("MobileNetV2", "blocks.6.0.conv.7.running_var", (160,)),
    ("MobileNetV2", "blocks.1.0.conv.3.weight", (48, 1, 3, 3)),
    ("MobileNetV2", "conv2.0.weight", (1280, 160, 1, 1)),
    ("MobileNetV2", "classifier.0.weight", (100, 1280)),
    ("ShuffleV1", "layer1.0.conv1.weight", (54, 24, 1, 1)),
    ("ShuffleV1", "layer2.0.conv3.weight", (240, 20, 1, 1)),
    ("ShuffleV1", "linear.weight", (100, 960)),
    ("ShuffleV2", "layer1.0.conv5.weight", (58, 58, 1, 1)),
    ("ShuffleV2", "layer3.3.bn3.weight", (232,)),
    ("ShuffleV2", "conv2.weight", (1024, 464, 1, 1)),
    ("ResNet50", "layer1.0.shortcut.0.weight", (256, 64, 1, 1)),
    ("ResNet50", "layer4.2.conv3.weight", (2048, 512, 1, 1)),
    ("ResNet50", "linear.weight", (100, 2048)),
]


@pytest.mark.parametrize("name,key,shape", KEY_SHAPES)
def test_reference_key_shapes(name, key, shape):
    assert tuple(cached_model(name).state_dict()[key].shape) == shape


def test_no_shortcut_keys_where_reference_has_none():
    keys = set(cached_model("wrn_40_1").state_dict())
    assert "block1.layer.0.convShortcut.weight" not in keys  # 16 -> 16: identity shortcut
    assert "block2.layer.1.convShortcut.weight" not in keys
    assert not any(".shortcut." in k for k in cached_model("ResNet50").state_dict() if k.startswith("layer1.1."))


# Published parameter counts (millions, 100 classes) from the CRD paper / mdistiller.
PUBLISHED_M = {
    "resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.25, "vgg8": 3.96, "vgg13": 9.46,
    "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36, "ResNet50": 23.71,
}


@pytest.mark.parametrize("name,millions", sorted(PUBLISHED_M.items()))
def test_parameter_counts_match_published(name, millions):
    assert count_parameters(cached_model(name)) / 1e6 == pytest.approx(millions, rel=0.015)


def test_wrapped_prefixed_state_dict_loads_strictly():
    torch.manual_seed(1)
    source = create_model("resnet8", 10)
    checkpoint = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 240}
    target = create_model("resnet8", 10)
    load_state_dict_compat(target, checkpoint)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_key_fails_strictly():
    state = create_model("wrn_16_1", 10).state_dict()
    del state["block2.layer.0.convShortcut.weight"]
    with pytest.raises(RuntimeError, match="convShortcut"):
        load_state_dict_compat(create_model("wrn_16_1", 10), state)
    load_state_dict_compat(create_model("wrn_16_1", 10), state, strict=False)


def test_duplicate_registration_raises():
    with pytest.raises(RegistryError, match="already registered"):
        MODELS.register("resnet8")(lambda num_classes: None)
    assert MODELS.get("resnet8") is not None and "resnet8" in MODELS


def test_unknown_name_suggests_close_matches():
    with pytest.raises(RegistryError) as info:
        create_model("resnet8x5", 10)
    assert "resnet8x4" in str(info.value)


def test_factories_take_input_kwargs():
    assert create_model("cnn1d", 5, in_channels=2, length=64).input_shape == (2, 64)
    assert create_model("mlp1d", 5, length=20, hidden=(16,)).feature_info[0].channels == 16
    vector_mlp = create_model("mlp", 3, input_features=13, hidden=(16, 8), norm=False)
    assert vector_mlp.input_shape == (13,) and vector_mlp.embedding_dim == 8
    assert [(s.name, s.channels, s.stride, s.bn) for s in vector_mlp.feature_info] == [
        ("hidden.0", 16, 1, None), ("hidden.1", 8, 1, None)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in vector_mlp.modules())
    assert create_model("cnn_digits", 5, size=16).input_shape == (1, 16, 16)
    vgg = create_model("vgg8", 10, input_size=64)
    assert vgg.feature_info[-1].stride == 16
    with torch.no_grad():
        assert vgg.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_stage_bn_is_a_batchnorm_over_the_stage_channels(name):
    """``FeatureStage.bn`` (OFD's margins) names the BatchNorm before the stage's last ReLU."""
    model = cached_model(name)
    for s in model.feature_info:
        if s.bn is not None:
            bn = resolve_module(model, s.bn)
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm), (s, bn)
            assert bn.num_features == s.channels, (s, bn)


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("shape", [(1, 40), (3, 32, 32), (1, 8, 8)])
def test_generators_make_batches_shaped_like_the_data(name, shape):
    gen = create_model(name, out_shape=shape)
    z = torch.randn(4, gen.nz)
    out = gen(z)
    assert out.shape == (4, *shape) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)


def test_generators_are_registered_as_such():
    assert GENERATORS == ["dfad_generator"]
