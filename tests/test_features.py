"""Feature taps by module path on any nn.Module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillab.features import FeatureTaps, probe_shapes, resolve_feature
from distillab.models import create_model


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def test_taps_capture_outputs_and_inputs_and_are_removed():
    model = Plain()
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(model, {"mid": "body.1", "pooled": "fc:input", "last": "body.2"}) as taps:
        model(x)
        feats = taps.pop()
    assert feats["mid"].shape == (2, 4, 8, 8) and feats["last"].shape == (2, 8, 4, 4)
    torch.testing.assert_close(feats["pooled"], model.body(x).mean((2, 3)))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_probe_shapes_and_bad_paths():
    model = Plain()
    assert probe_shapes(model, {"p": "fc:input"}, (3, 8, 8)) == {"p": torch.Size([2, 8])}
    assert model.training
    with pytest.raises(KeyError, match="did you mean 'body.2'"):
        FeatureTaps(model, {"x": "body.3"})
    with pytest.raises(ValueError, match="'input' or 'output'"):
        FeatureTaps(model, {"x": "fc:inptu"})


def test_symbolic_feature_names():
    model = create_model("resnet8x4", num_classes=100)
    assert resolve_feature(model, "embedding") == model.embedding_tap
    assert resolve_feature(model, "stage-1") == model.feature_info[-1].name
    assert resolve_feature(model, "layer2") == "layer2"
    with pytest.raises(ValueError, match="feature stages"):
        resolve_feature(model, "stage99")
    with pytest.raises(ValueError, match="no feature_info"):
        resolve_feature(Plain(), "stage0")
