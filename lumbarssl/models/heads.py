"""The projection head ``g`` of contrastive pretraining (paper Sec. 3.4, 4.3)."""

from __future__ import annotations

from torch import Tensor, nn

from lumbarssl.models.registry import ARCHITECTURE_KEY, register_model

__all__ = ["ProjectionHead"]


@register_model("projection_head")
class ProjectionHead(nn.Module):
    """Two fully connected layers with BatchNorm and ReLU: ``Linear → BN → ReLU → Linear``.

    Maps an encoder embedding ``f(x)`` to the space ``z = g(f(x))`` where the multi-positive
    NT-Xent loss compares views (paper Sec. 3.4; architecture in Sec. 4.3). The first linear
    layer has no bias because the BatchNorm after it has its own shift. Projections are not
    L2-normalised here: the loss works with cosine similarity.

    Args:
        in_dim: Embedding size ``D`` of the encoder (512 for ResNet-18, Sec. 3.3).
        hidden_dim: Width of the hidden layer (the paper does not state it; 512 keeps the
            encoder's width, as in SimCLR).
        out_dim: Size of the projection (128, as in SimCLR; the paper does not state it).

    Raises:
        ValueError: If a dimension is smaller than 1.

    Shape:
        - input: ``(B, in_dim)``
        - output: ``(B, out_dim)``
    """

    def __init__(self, in_dim: int = 512, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.in_dim = in_dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Project a batch of embeddings.

        Args:
            x: Encoder embeddings of shape ``(B, in_dim)``.

        Returns:
            Projections of shape ``(B, out_dim)``.
        """
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected x of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        out: Tensor = self.net(x)
        return out

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        return {
            ARCHITECTURE_KEY: "projection_head",
            "in_dim": self.in_dim,
            "hidden_dim": self.hidden_dim,
            "out_dim": self.out_dim,
        }
