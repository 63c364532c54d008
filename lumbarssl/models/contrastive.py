"""Encoder + projection head used for contrastive pretraining (paper Sec. 3.4, 4.3)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from lumbarssl.models.encoder import ENCODER_DIM, resnet18_encoder
from lumbarssl.models.heads import ProjectionHead
from lumbarssl.models.registry import ARCHITECTURE_KEY, build_model, model_config, register_model

__all__ = ["ContrastiveModel"]


class ContrastiveModel(nn.Module):
    """The pretraining network ``z = g(f(x))``: a slice encoder ``f`` and a projection head ``g``.

    After pretraining, :attr:`encoder` is what the downstream
    :class:`~lumbarssl.models.DiscClassifier` starts from; the projection head is discarded.

    Args:
        encoder: Slice encoder ``f`` mapping ``(B, C_in, H, W)`` to ``(B, D)``. ``None`` builds
            the paper's randomly initialised single-channel ResNet-18 (Sec. 4.3).
        head: Projection head ``g`` mapping ``(B, D)`` to ``(B, P)``. ``None`` builds
            :class:`~lumbarssl.models.ProjectionHead` with its defaults (``D = 512``,
            ``P = 128``).

    Shape:
        - input: ``(B, C_in, H, W)``
        - :meth:`forward_features` output: ``(B, D)``
        - :meth:`forward` output: ``(B, P)``
    """

    def __init__(self, encoder: nn.Module | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else resnet18_encoder(in_chans=1)
        self.head = head if head is not None else ProjectionHead(in_dim=ENCODER_DIM)

    def forward_features(self, x: Tensor) -> Tensor:
        """Encoder embeddings ``f(x)``.

        Args:
            x: Slices of shape ``(B, C_in, H, W)``.

        Returns:
            Embeddings of shape ``(B, D)``.
        """
        if x.ndim != 4:
            raise ValueError(f"expected x of shape (B, C_in, H, W), got {tuple(x.shape)}")
        out: Tensor = self.encoder(x)
        return out

    def forward_head(self, features: Tensor) -> Tensor:
        """Projections ``g(h)`` of encoder embeddings.

        Args:
            features: Embeddings of shape ``(B, D)``.

        Returns:
            Projections of shape ``(B, P)``.
        """
        out: Tensor = self.head(features)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Project a batch of (augmented) views for the contrastive loss.

        Args:
            x: Slices of shape ``(B, C_in, H, W)``; for ``V`` views per disc pass the flattened
                ``(B*V, C_in, H, W)`` batch.

        Returns:
            Projections of shape ``(B, P)`` (not normalised; the loss uses cosine similarity).
        """
        return self.forward_head(self.forward_features(x))

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        return {
            ARCHITECTURE_KEY: "contrastive_model",
            "encoder": model_config(self.encoder),
            "head": model_config(self.head),
        }


@register_model("contrastive_model")
def _build_contrastive_model(
    *, encoder: Mapping[str, object], head: Mapping[str, object]
) -> nn.Module:
    return ContrastiveModel(build_model(encoder), build_model(head))
