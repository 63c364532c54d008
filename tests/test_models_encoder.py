from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, resnet18

from lumbarssl.models import (
    ContrastiveModel,
    ProjectionHead,
    adapt_stem_weight,
    model_config,
    registry,
    resnet18_encoder,
)
from lumbarssl.models.registry import register_describer


@pytest.mark.parametrize("in_chans", [1, 3, 5])
def test_encoder_maps_slices_to_512_features(in_chans: int) -> None:
    encoder = resnet18_encoder(in_chans).eval()
    out = encoder(torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 512)
    assert out.dtype == torch.float32
    assert isinstance(encoder.fc, nn.Identity)
    conv1 = encoder.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.in_channels == in_chans


def test_encoder_rejects_bad_in_chans() -> None:
    with pytest.raises(ValueError, match="in_chans must be >= 1, got 0"):
        resnet18_encoder(0)


def test_encoder_rejects_unknown_weight_name() -> None:
    with pytest.raises(ValueError, match=r"'IMAGENET1K_V1'.*got 'NOT_A_WEIGHT'"):
        resnet18_encoder(1, weights="NOT_A_WEIGHT")


@given(
    in_chans=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_stem_adaptation_preserves_response_to_channel_constant_images(
    in_chans: int, seed: int
) -> None:
    # Reference: the original 3-channel conv applied to the grey image replicated to RGB.
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(8, 3, 5, 5, generator=gen, dtype=torch.float64)
    grey = torch.randn(2, 1, 12, 12, generator=gen, dtype=torch.float64)
    expected = F.conv2d(grey.expand(-1, 3, -1, -1), weight, padding=2)
    adapted = adapt_stem_weight(weight, in_chans)
    assert adapted.shape == (8, in_chans, 5, 5)
    got = F.conv2d(grey.expand(-1, in_chans, -1, -1), adapted, padding=2)
    torch.testing.assert_close(got, expected)


def test_stem_adaptation_for_one_channel_is_the_kernel_sum() -> None:
    weight = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(adapt_stem_weight(weight, 1), weight.sum(dim=1, keepdim=True))


def test_stem_adaptation_keeps_channel_specific_kernels_for_multiples_of_three() -> None:
    weight = torch.randn(4, 3, 3, 3)
    adapted = adapt_stem_weight(weight, 6)
    torch.testing.assert_close(adapted[:, :3], weight / 2)
    torch.testing.assert_close(adapted[:, 3:], weight / 2)


def test_stem_adaptation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="in_chans must be >= 1"):
        adapt_stem_weight(torch.randn(4, 3, 3, 3), 0)
    with pytest.raises(ValueError, match=r"got shape \(4, 3\)"):
        adapt_stem_weight(torch.randn(4, 3), 1)


def test_pretrained_weights_are_loaded_and_stem_adapted_without_download(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in for the ImageNet state dict: another random torchvision ResNet-18.
    fake = resnet18(weights=None).state_dict()
    calls: list[Any] = []

    def fake_get_state_dict(self: Any, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        calls.append(self)
        return dict(fake)

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", fake_get_state_dict)
    encoder = resnet18_encoder(1, weights="IMAGENET1K_V1")
    assert calls == [ResNet18_Weights.IMAGENET1K_V1]
    state = encoder.state_dict()
    torch.testing.assert_close(state["conv1.weight"], fake["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(state["layer4.1.conv2.weight"], fake["layer4.1.conv2.weight"])
    assert not any(key.startswith("fc.") for key in state)

    rgb = resnet18_encoder(3, weights=ResNet18_Weights.IMAGENET1K_V1)
    torch.testing.assert_close(rgb.state_dict()["conv1.weight"], fake["conv1.weight"])


def test_encoder_config_is_recognised() -> None:
    assert model_config(resnet18_encoder(2)) == {"architecture": "resnet18_encoder", "in_chans": 2}


def test_model_config_refuses_foreign_modules() -> None:
    with pytest.raises(ValueError, match="cannot describe a Linear"):
        model_config(nn.Linear(2, 2))
    plain = resnet18(weights=None)  # still has its fc layer: not our encoder
    with pytest.raises(ValueError, match="cannot describe a ResNet"):
        model_config(plain)


def test_a_registered_describer_makes_foreign_modules_describable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_DESCRIBERS", list(registry._DESCRIBERS))

    @register_describer
    def linear(module: nn.Module) -> dict[str, object] | None:
        if not isinstance(module, nn.Linear):
            return None
        return {"architecture": "linear", "n": module.in_features}

    assert model_config(nn.Linear(2, 3)) == {"architecture": "linear", "n": 2}
    assert model_config(resnet18_encoder(1)) == {"architecture": "resnet18_encoder", "in_chans": 1}
    with pytest.raises(ValueError, match="cannot describe a Conv1d"):
        model_config(nn.Conv1d(1, 1, 1))


def test_projection_head_shapes_and_structure() -> None:
    head = ProjectionHead()
    out = head(torch.randn(4, 512))
    assert out.shape == (4, 128)
    layers = [type(m) for m in head.net]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    small = ProjectionHead(16, 8, 4)
    assert small(torch.randn(3, 16)).shape == (3, 4)


def test_projection_head_validates() -> None:
    with pytest.raises(ValueError, match="out_dim must be >= 1, got 0"):
        ProjectionHead(out_dim=0)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 512\), got \(4, 3\)"):
        ProjectionHead()(torch.randn(4, 3))


def test_contrastive_model_projects_and_exposes_features() -> None:
    model = ContrastiveModel()
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    features = model.forward_features(x)
    assert features.shape == (4, 512)
    projections = model(x)
    assert projections.shape == (4, 128)
    torch.testing.assert_close(projections, model.forward_head(features))
    with pytest.raises(ValueError, match=r"got \(1, 32, 32\)"):
        model(torch.randn(1, 32, 32))
