from __future__ import annotations

import pytest
import torch
from torch import nn

from lumbarssl.models import Localizer2p5D


def test_forward_gives_normalised_coordinates() -> None:
    torch.manual_seed(0)
    model = Localizer2p5D().eval()
    x = torch.randn(4, 3, 64, 64)
    level = torch.tensor([0, 1, 2, 4])
    out = model(x, level)
    assert out.shape == (4, 2)
    assert out.dtype == torch.float32
    assert ((out >= 0) & (out <= 1)).all()
    features = model.forward_features(x)
    assert features.shape == (4, 512)
    torch.testing.assert_close(model.forward_head(features, level), out)


def test_architecture_follows_section_4_5() -> None:
    model = Localizer2p5D()
    conv1 = model.backbone.get_submodule("conv1")
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.in_channels == 3
    assert model.level_embedding.num_embeddings == 5
    assert model.level_embedding.embedding_dim == 32
    layers = list(model.head)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.Sigmoid]
    first, dropout, last = layers[0], layers[2], layers[3]
    assert isinstance(first, nn.Linear)
    assert (first.in_features, first.out_features) == (544, 256)
    assert isinstance(dropout, nn.Dropout)
    assert dropout.p == 0.5
    assert isinstance(last, nn.Linear)
    assert last.out_features == 2


def test_level_changes_the_prediction() -> None:
    torch.manual_seed(0)
    model = Localizer2p5D().eval()
    x = torch.randn(1, 3, 32, 32).expand(5, -1, -1, -1)
    out = model(x, torch.arange(5))
    assert torch.unique(out, dim=0).shape[0] == 5


def test_gradients_reach_backbone_and_embedding() -> None:
    model = Localizer2p5D(in_chans=1)
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([1, 3]))
    torch.autograd.backward(nn.functional.smooth_l1_loss(out, torch.rand(2, 2)))
    assert model.backbone.get_parameter("conv1.weight").grad is not None
    grad = model.level_embedding.weight.grad
    assert grad is not None
    assert grad[[1, 3]].abs().sum() > 0
    assert grad[[0, 2, 4]].abs().sum() == 0


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        Localizer2p5D(dropout=1.0)
    with pytest.raises(ValueError, match="level_dim must be >= 1, got 0"):
        Localizer2p5D(level_dim=0)
    model = Localizer2p5D()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(
        ValueError, match=r"expected x of shape \(B, 3, H, W\), got \(2, 1, 32, 32\)"
    ):
        model(torch.randn(2, 1, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"expected level of shape \(B,\) = \(2,\), got \(3,\)"):
        model(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer level tensor"):
        model(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"level indices must be in \[0, 5\), got values \[0, 5\]"):
        model(x, torch.tensor([0, 5]))


def test_several_levels_per_stack_equal_one_call_per_level() -> None:
    torch.manual_seed(0)
    model = Localizer2p5D().eval()  # eval: the head's dropout would differ between calls
    x = torch.randn(3, 3, 64, 64)
    levels = torch.tensor([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 2, 0, 1, 3]])
    with torch.no_grad():
        joint = model(x, levels)
        separate = torch.stack([model(x, levels[:, k]) for k in range(levels.shape[1])], dim=1)
    assert joint.shape == (3, 5, 2)
    torch.testing.assert_close(joint, separate, rtol=1e-5, atol=1e-6)


def test_several_levels_need_one_row_per_stack() -> None:
    model = Localizer2p5D()
    with pytest.raises(ValueError, match=r"level of shape \(B, K\) with B = 2, got \(3, 5\)"):
        model(torch.randn(2, 3, 32, 32), torch.zeros(3, 5, dtype=torch.long))
