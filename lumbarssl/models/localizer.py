"""The 2.5D disc-centre regressor of the auxiliary localisation task (paper Sec. 3.2, 4.5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from lumbarssl import paper
from lumbarssl.models.encoder import ENCODER_DIM, resnet18_encoder
from lumbarssl.models.registry import ARCHITECTURE_KEY, register_model

__all__ = ["Localizer2p5D"]


class Localizer2p5D(nn.Module):
    """Regress the normalised centre ``(x, y)`` of one disc from a 2.5D stack of slices.

    Three consecutive sagittal slices, stacked as channels, go through a ResNet-18; a learnt
    embedding of the requested disc level is concatenated to the 512 image features, then
    ``Linear(512 + level_dim, hidden) → ReLU → Dropout → Linear(hidden, 2) → sigmoid``
    (paper Sec. 4.5). The sigmoid keeps predictions inside the image: ``x`` is the column and
    ``y`` the row, each divided by the image width and height of the network input (the paper
    says "normalised 2D coordinates" without the formula; the data pipeline must use the same
    convention to convert back to pixels).

    Args:
        in_chans: Slices stacked as channels (3 in the paper, Sec. 3.2).
        num_levels: Number of disc levels (5: L1/L2 to L5/S1).
        level_dim: Size of the level embedding (32, Sec. 4.5).
        hidden: Width of the fully connected layer (256, Sec. 4.5).
        dropout: Dropout probability after it (0.5, Sec. 4.5).
        weights: Backbone weights for :func:`~lumbarssl.models.resnet18_encoder`; the paper
            starts from ``"IMAGENET1K_V1"`` (Sec. 4.5). ``None`` (default) never downloads.

    Raises:
        ValueError: If a size is smaller than 1 or ``dropout`` is outside ``[0, 1)``.

    Shape:
        - x: ``(B, in_chans, H, W)``
        - level: ``(B,)`` integer level indices in ``[0, num_levels)``
        - output: ``(B, 2)`` normalised ``(x, y)`` in ``[0, 1]``
    """

    def __init__(
        self,
        in_chans: int = paper.LOCALIZER_SLICES,  # three adjacent slices (Sec. 3.2)
        num_levels: int = 5,  # L1/L2 ... L5/S1 (Sec. 3.1)
        level_dim: int = paper.LOCALIZER_LEVEL_DIM,
        hidden: int = paper.LOCALIZER_HIDDEN,
        dropout: float = paper.LOCALIZER_DROPOUT,
        *,
        weights: WeightsEnum | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_chans", in_chans),
            ("num_levels", num_levels),
            ("level_dim", level_dim),
            ("hidden", hidden),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_chans = in_chans
        self.num_levels = num_levels
        self.level_dim = level_dim
        self.hidden = hidden
        self.dropout = dropout
        self.backbone = resnet18_encoder(in_chans, weights=weights)
        self.level_embedding = nn.Embedding(num_levels, level_dim)
        self.head = nn.Sequential(
            nn.Linear(ENCODER_DIM + level_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 2),
            nn.Sigmoid(),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone features of the slice stack.

        Args:
            x: Slice stacks of shape ``(B, in_chans, H, W)``.

        Returns:
            Image features of shape ``(B, 512)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected x of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        out: Tensor = self.backbone(x)
        return out

    def forward_head(self, features: Tensor, level: Tensor) -> Tensor:
        """Coordinates from image features and the disc level.

        Args:
            features: Image features of shape ``(B, 512)``.
            level: Level indices of shape ``(B,)``, integer dtype, in ``[0, num_levels)``.

        Returns:
            Normalised ``(x, y)`` of shape ``(B, 2)``.
        """
        if features.ndim != 2 or features.shape[1] != ENCODER_DIM:
            raise ValueError(
                f"expected features of shape (B, {ENCODER_DIM}), got {tuple(features.shape)}"
            )
        if level.shape != features.shape[:1]:
            raise ValueError(
                f"expected level of shape (B,) = ({features.shape[0]},), got {tuple(level.shape)}"
            )
        if level.dtype.is_floating_point or level.dtype.is_complex or level.dtype == torch.bool:
            raise ValueError(f"expected an integer level tensor, got dtype {level.dtype}")
        if level.numel() and (int(level.min()) < 0 or int(level.max()) >= self.num_levels):
            raise ValueError(
                f"level indices must be in [0, {self.num_levels}), got values "
                f"{sorted(set(level.tolist()))}"
            )
        joint = torch.cat([features, self.level_embedding(level).to(features.dtype)], dim=1)
        out: Tensor = self.head(joint)
        return out

    def forward(self, x: Tensor, level: Tensor) -> Tensor:
        """Predict the disc centre of the requested level(s) in each stack.

        Args:
            x: Slice stacks of shape ``(B, in_chans, H, W)``.
            level: Level indices (0 = L1/L2, ..., 4 = L5/S1) of shape ``(B,)``, one level per
                stack, or ``(B, K)``, K levels per stack. With ``(B, K)`` the backbone runs
                once per stack and only the head once per level: the same outputs as K calls
                with ``(B,)`` levels (the head's dropout aside), at about 1/K of the cost.

        Returns:
            Normalised ``(x, y)`` in ``[0, 1]``: shape ``(B, 2)`` for ``(B,)`` levels,
            ``(B, K, 2)`` for ``(B, K)`` levels.
        """
        features = self.forward_features(x)
        if level.ndim != 2:
            return self.forward_head(features, level)
        if level.shape[0] != features.shape[0]:
            raise ValueError(
                f"expected level of shape (B, K) with B = {features.shape[0]}, "
                f"got {tuple(level.shape)}"
            )
        b, k = level.shape
        out = self.forward_head(features.repeat_interleave(k, dim=0), level.reshape(-1))
        return out.view(b, k, 2)

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        return {
            ARCHITECTURE_KEY: "localizer_2p5d",
            "in_chans": self.in_chans,
            "num_levels": self.num_levels,
            "level_dim": self.level_dim,
            "hidden": self.hidden,
            "dropout": self.dropout,
        }


@register_model("localizer_2p5d")
def _build_localizer(
    *,
    in_chans: int = paper.LOCALIZER_SLICES,
    num_levels: int = 5,
    level_dim: int = paper.LOCALIZER_LEVEL_DIM,
    hidden: int = paper.LOCALIZER_HIDDEN,
    dropout: float = paper.LOCALIZER_DROPOUT,
) -> nn.Module:
    # Checkpoints carry the weights, so a rebuilt localizer never asks for pretrained ones.
    return Localizer2p5D(in_chans, num_levels, level_dim, hidden, dropout)
