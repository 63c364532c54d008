"""ResNet-18 slice encoder with an ``in_chans``-adapted stem (paper Sec. 3.3)."""

from __future__ import annotations

from typing import Final

from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, WeightsEnum, resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from lumbarssl.models.registry import ARCHITECTURE_KEY, register_describer, register_model

__all__ = ["ENCODER_DIM", "adapt_stem_weight", "resnet18_encoder"]

#: Width of the ResNet-18 embedding once ``fc`` is removed. Paper Sec. 3.3, Eq. 1.
ENCODER_DIM: Final[int] = 512
#: Input channels of the ImageNet stem that pretrained weights come with.
_PRETRAINED_CHANS: Final[int] = 3


def adapt_stem_weight(weight: Tensor, in_chans: int) -> Tensor:
    """Adapt pretrained stem kernels to a different number of input channels.

    The rule keeps the stem's response to an image whose channels are all equal: for such an
    input the adapted convolution gives exactly what the original gives on the same image
    replicated to the original channel count, so the BatchNorm after the stem sees the
    activation scale it was trained with.

    * ``in_chans == 1``: the kernels are **summed** over the input channels (a grey image is
      treated as an RGB image with R = G = B).
    * ``in_chans`` a multiple of the original count: the kernels are repeated cyclically and
      scaled by ``original / in_chans`` (channel-specific filters are kept).
    * any other ``in_chans``: every new channel gets the summed kernel divided by ``in_chans``.

    Args:
        weight: Pretrained convolution weight.
        in_chans: Number of input channels wanted.

    Returns:
        The adapted weight, same dtype and device as ``weight``.

    Raises:
        ValueError: If ``in_chans < 1`` or ``weight`` is not 4-D.

    Shape:
        - weight: ``(O, I, k_h, k_w)``
        - output: ``(O, in_chans, k_h, k_w)``
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if weight.ndim != 4:
        raise ValueError(
            f"expected a conv weight of shape (O, I, k_h, k_w), got shape {tuple(weight.shape)}"
        )
    original = weight.shape[1]
    if in_chans == original:
        return weight.clone()
    summed = weight.sum(dim=1, keepdim=True)
    if in_chans == 1:
        return summed
    if in_chans % original == 0:
        repeats = in_chans // original
        return weight.repeat(1, repeats, 1, 1) * (original / in_chans)
    return summed.expand(-1, in_chans, -1, -1) / in_chans


def _stem_conv(in_chans: int, like: nn.Conv2d) -> nn.Conv2d:
    """A stem convolution like ``like`` but with ``in_chans`` inputs, initialised as torchvision."""
    conv = nn.Conv2d(
        in_chans,
        like.out_channels,
        kernel_size=like.kernel_size,  # type: ignore[arg-type]
        stride=like.stride,  # type: ignore[arg-type]
        padding=like.padding,  # type: ignore[arg-type]
        bias=False,
    )
    # Same initialisation torchvision's ResNet applies to every convolution.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def resnet18_encoder(in_chans: int = 1, *, weights: WeightsEnum | str | None = None) -> nn.Module:
    """Build the paper's slice encoder: a torchvision ResNet-18 without its ``fc`` layer.

    The classification layer is replaced by :class:`torch.nn.Identity` so the network maps a
    slice to its 512-d global-average-pooled representation ``z = E(x)`` (paper Sec. 3.3,
    Eq. 1). The paper's contrastive encoder starts from random weights with ``in_chans=1``
    (Sec. 4.3); its localizer starts from ``"IMAGENET1K_V1"`` with ``in_chans=3`` (Sec. 4.5).

    Args:
        in_chans: Number of input channels (1 for single-slice MRI, 3 for a 2.5D stack).
        weights: Pretrained weights, as a :class:`torchvision.models.ResNet18_Weights` member or
            its name (e.g. ``"IMAGENET1K_V1"``). ``None`` (default) gives torchvision's random
            initialisation and never downloads anything. When given, torchvision downloads the
            weights unless they are in its cache, and the stem is adapted with
            :func:`adapt_stem_weight` if ``in_chans != 3``.

    Returns:
        The torchvision ``ResNet`` with ``fc = nn.Identity()`` and ``conv1`` taking
        ``in_chans`` channels.

    Raises:
        ValueError: If ``in_chans < 1`` or ``weights`` is not a ResNet-18 weight name.

    Shape:
        - input: ``(B, in_chans, H, W)``
        - output: ``(B, 512)``
    """
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    resolved = _resolve_weights(weights)
    model = resnet18(weights=None)
    if in_chans != _PRETRAINED_CHANS:
        model.conv1 = _stem_conv(in_chans, model.conv1)
    model.fc = nn.Identity()
    if resolved is not None:
        state = dict(resolved.get_state_dict(progress=True))
        state["conv1.weight"] = adapt_stem_weight(state["conv1.weight"], in_chans)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.load_state_dict(state, strict=True)
    encoder: nn.Module = model
    return encoder


def _resolve_weights(weights: WeightsEnum | str | None) -> WeightsEnum | None:
    if weights is None:
        return None
    try:
        return ResNet18_Weights.verify(weights)
    except (KeyError, TypeError) as exc:
        names = ", ".join(repr(w.name) for w in ResNet18_Weights)
        raise ValueError(
            f"weights must be None, a ResNet18_Weights member or one of {names}, got {weights!r}"
        ) from exc


@register_model("resnet18_encoder")
def _build_resnet18_encoder(*, in_chans: int = 1) -> nn.Module:
    # Checkpoints carry the weights, so a rebuilt encoder never asks for pretrained ones.
    return resnet18_encoder(in_chans)


@register_describer
def _resnet18_config(module: nn.Module) -> dict[str, object] | None:
    """The config of a :func:`resnet18_encoder` network, or ``None`` for anything else."""
    if type(module) is not ResNet or not isinstance(module.get_submodule("fc"), nn.Identity):
        return None
    # ResNet-18 is two BasicBlocks in each of its four stages.
    for index in range(1, 5):
        stage = module.get_submodule(f"layer{index}")
        if not isinstance(stage, nn.Sequential) or len(stage) != 2:
            return None
        if not all(type(block) is BasicBlock for block in stage):
            return None
    conv1 = module.get_submodule("conv1")
    if not isinstance(conv1, nn.Conv2d):
        return None
    return {ARCHITECTURE_KEY: "resnet18_encoder", "in_chans": conv1.in_channels}
