"""Disc-level severity classifier with the paper's three training regimes (Sec. 3.5, 4.4, 6)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final, Literal, get_args

import torch
from torch import Tensor, nn

from lumbarssl import paper
from lumbarssl.models.encoder import ENCODER_DIM
from lumbarssl.models.ordinal import OrdinalHead
from lumbarssl.models.pool import DeepSetsDiscPool
from lumbarssl.models.registry import ARCHITECTURE_KEY, build_model, model_config, register_model

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "BACKBONE_LR",
    "FINETUNE_FROZEN_MODULES",
    "HEAD_KINDS",
    "HEAD_LR",
    "DiscClassifier",
    "HeadKind",
    "TrainingMode",
]

#: How the encoder is trained. Paper Sec. 6, the three rows of Table 1.
TrainingMode = Literal["scratch", "linear_probe", "finetune"]
_MODES: Final[tuple[str, ...]] = get_args(TrainingMode)

#: The grading head: the paper's linear softmax layer (Sec. 3.5) or an ordinal one
#: (:class:`~lumbarssl.models.OrdinalHead`, CORN or cumulative link; the paper's future work).
HeadKind = Literal["softmax", "corn", "cumulative"]
HEAD_KINDS: Final[tuple[str, ...]] = get_args(HeadKind)

#: Encoder children frozen in ``"finetune"`` mode, the stem and layers 1-3. Paper Sec. 4.4.
FINETUNE_FROZEN_MODULES: Final[tuple[str, ...]] = ("conv1", "bn1", "layer1", "layer2", "layer3")
#: Learning rate of the trainable backbone (layer4) in fine-tuning. Paper Sec. 4.4 (an alias
#: of :data:`lumbarssl.paper.BACKBONE_LR`).
BACKBONE_LR: Final[float] = paper.BACKBONE_LR
#: Learning rate of the classification head in fine-tuning. Paper Sec. 4.4 (an alias of
#: :data:`lumbarssl.paper.HEAD_LR`).
HEAD_LR: Final[float] = paper.HEAD_LR
#: Normal/Mild, Moderate, Severe (paper Sec. 3.1).
_NUM_GRADES: Final[int] = 3


class _GradingModel(nn.Module):
    """The training regimes of Table 1, for any grading model with one or more encoders.

    Subclasses list their encoders in :meth:`_encoders`; :meth:`set_mode` freezes the parts a
    regime freezes (paper Sec. 4.4) and :meth:`train` keeps those parts, and their BatchNorm
    statistics, in evaluation mode.
    """

    mode: TrainingMode

    def _encoders(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    def set_mode(self, mode: TrainingMode) -> None:
        """Switch the training regime, resetting every ``requires_grad`` flag accordingly.

        Args:
            mode: ``"scratch"``, ``"linear_probe"`` or ``"finetune"``.

        Raises:
            ValueError: If ``mode`` is unknown, or ``"finetune"`` is asked of an encoder
                without the children ``conv1``, ``bn1``, ``layer1``-``layer3``.
        """
        for encoder in self._encoders():
            _check_mode(mode, encoder)
        self.mode = mode
        self.requires_grad_(True)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> Iterator[nn.Module]:
        for encoder in self._encoders():
            yield from _frozen_parts(encoder, self.mode)

    def train(self, mode: bool = True) -> Self:
        """Set training mode, keeping frozen encoder parts (and their BatchNorm) in eval mode.

        Args:
            mode: ``True`` for training, ``False`` for evaluation.

        Returns:
            ``self``.
        """
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self


class DiscClassifier(_GradingModel):
    """Grade a disc from its slice(s): encoder → Deep Sets pool → linear or ordinal head.

    Each slice is encoded to ``D`` features, the ``S`` slices of a disc are pooled by
    :class:`~lumbarssl.models.DeepSetsDiscPool` (a plain mean by default, the identity for the
    paper's single ROI per disc, Sec. 3.5) and a linear layer gives the ``C`` logits.

    With ``head_kind="corn"`` or ``"cumulative"`` the head is an
    :class:`~lumbarssl.models.OrdinalHead` and :meth:`forward` returns its ``C - 1`` ordinal
    logits, the input of :class:`~lumbarssl.losses.OrdinalLoss`;
    :func:`lumbarssl.pipeline.class_logits` turns either output into ``(B, C)`` class logits
    (log class probabilities for an ordinal head, via
    :func:`~lumbarssl.losses.ordinal_log_probabilities`), so evaluation, calibration and
    prediction treat both heads alike.

    ``mode`` selects which parameters train (paper Sec. 4.4 and Table 1):

    * ``"scratch"``: everything trains.
    * ``"linear_probe"``: the whole encoder is frozen (``requires_grad=False`` and its
      BatchNorm layers stay in eval mode, so their running statistics do not move, even after
      ``model.train()``); only the pool and the head train.
    * ``"finetune"`` (paper default): the stem (``conv1``, ``bn1``) and ``layer1``-``layer3``
      are frozen the same way; ``layer4``, the pool and the head train, at two learning rates
      (:meth:`param_groups`).

    Args:
        encoder: Slice encoder mapping ``(B, C_in, H, W)`` to ``(B, D)``; for ``"finetune"`` it
            must have the children ``conv1``, ``bn1``, ``layer1``-``layer3`` of a torchvision
            ResNet (e.g. :func:`~lumbarssl.models.resnet18_encoder`).
        num_classes: Number of grades ``C`` (3: Normal/Mild, Moderate, Severe; Sec. 3.1).
        pool: Set pooling of shape ``(B, S, D) → (B, D)``; ``None`` builds the paper's plain mean.
        mode: ``"scratch"``, ``"linear_probe"`` or ``"finetune"``.
        feature_dim: Encoder output size ``D`` (512 for ResNet-18).
        head_kind: ``"softmax"`` (the paper's linear layer, default), ``"corn"`` or
            ``"cumulative"`` (an ordinal head).

    Raises:
        ValueError: If ``num_classes < 2``, ``feature_dim < 1``, ``mode`` or ``head_kind`` is
            unknown, or ``"finetune"`` is asked of an encoder without the ResNet children.

    Shape:
        - x: ``(B, C_in, H, W)`` (one slice per disc) or ``(B, S, C_in, H, W)``
        - mask: ``(B, S)`` boolean, ``True`` for real slices; only with 5-D ``x``
        - output: ``(B, C)`` logits; ``(B, C - 1)`` ordinal logits for an ordinal head
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = _NUM_GRADES,
        pool: nn.Module | None = None,
        *,
        mode: TrainingMode = "finetune",  # the paper's model (Sec. 4.4)
        feature_dim: int = ENCODER_DIM,
        head_kind: HeadKind = "softmax",  # the paper's head (Sec. 3.5)
    ) -> None:
        super().__init__()
        _check_head(num_classes, feature_dim, head_kind)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.head_kind: HeadKind = head_kind
        self.encoder = encoder
        self.pool = pool if pool is not None else DeepSetsDiscPool(feature_dim)
        self.head: nn.Module = _grading_head(feature_dim, num_classes, head_kind)
        self.mode: TrainingMode = mode
        self.set_mode(mode)

    # ----------------------------------------------------------------------------- modes
    def _encoders(self) -> Iterable[nn.Module]:
        return (self.encoder,)

    def param_groups(
        self,
        backbone_lr: float = BACKBONE_LR,  # layer4 in fine-tuning, paper Sec. 4.4
        head_lr: float = HEAD_LR,  # classification head, paper Sec. 4.4
    ) -> list[dict[str, object]]:
        """Parameter groups for a :class:`torch.optim.Optimizer` (differential fine-tuning).

        Only parameters with ``requires_grad`` are listed; a group with none is left out.

        * ``"finetune"``: ``backbone`` = the encoder's trainable part (``layer4``) at
          ``backbone_lr``; ``head`` = pool and linear head at ``head_lr`` (paper Sec. 4.4).
        * ``"scratch"``: the *whole* encoder is the ``backbone`` group (pass
          ``backbone_lr=head_lr`` for a single rate; the paper does not state the rate of its
          scratch baseline); pool and head form ``head``.
        * ``"linear_probe"``: only the ``head`` group.

        Args:
            backbone_lr: Learning rate of the trainable encoder parameters.
            head_lr: Learning rate of the pool and the classification head.

        Returns:
            A list of ``{"name", "params", "lr"}`` dicts (the optimizer keeps ``"name"``, which
            helps logging).

        Raises:
            ValueError: If a learning rate is negative.
        """
        return _param_groups((self.encoder,), (self.pool, self.head), backbone_lr, head_lr)

    # ----------------------------------------------------------------------------- forward
    def _encode(self, x: Tensor) -> Tensor:
        features: Tensor = self.encoder(x)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"encoder returned shape {tuple(features.shape)}, expected "
                f"(N, feature_dim={self.feature_dim})"
            )
        return features

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pooled disc embeddings.

        With a mask, padded slices are not passed through the encoder, so they cannot move its
        BatchNorm statistics.

        Args:
            x: Slices of shape ``(B, C_in, H, W)`` or ``(B, S, C_in, H, W)``.
            mask: Optional boolean tensor of shape ``(B, S)`` for 5-D ``x``.

        Returns:
            Disc embeddings of shape ``(B, D)``.
        """
        if x.ndim == 4:
            if mask is not None:
                raise ValueError(
                    f"mask is only used with x of shape (B, S, C_in, H, W), got x of shape "
                    f"{tuple(x.shape)}"
                )
            out: Tensor = self.pool(self._encode(x).unsqueeze(1))
            return out
        if x.ndim != 5:
            raise ValueError(
                f"expected x of shape (B, C_in, H, W) or (B, S, C_in, H, W), got {tuple(x.shape)}"
            )
        batch, slices = x.shape[:2]
        flat = x.flatten(0, 1)
        if mask is None:
            embeddings = self._encode(flat)
        else:
            if mask.shape != (batch, slices) or mask.dtype != torch.bool:
                raise ValueError(
                    f"expected a boolean mask of shape (B, S) = {(batch, slices)}, got "
                    f"{mask.dtype} of shape {tuple(mask.shape)}"
                )
            keep = mask.flatten()
            kept = self._encode(flat[keep])
            embeddings = kept.new_zeros((batch * slices, self.feature_dim))
            embeddings[keep] = kept
        out = self.pool(embeddings.view(batch, slices, self.feature_dim), mask)
        return out

    @property
    def is_ordinal(self) -> bool:
        """Whether the head is ordinal (``head_kind`` ``"corn"`` or ``"cumulative"``)."""
        return self.head_kind != "softmax"

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits from pooled disc embeddings.

        Args:
            features: Disc embeddings of shape ``(B, D)``.

        Returns:
            Logits of shape ``(B, C)``, or ``(B, C - 1)`` ordinal logits for an ordinal head.
        """
        out: Tensor = self.head(features)
        return out

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Grade a batch of discs.

        Args:
            x: Slices of shape ``(B, C_in, H, W)`` or ``(B, S, C_in, H, W)``.
            mask: Optional boolean tensor of shape ``(B, S)``, ``True`` for real slices.

        Returns:
            Logits of shape ``(B, C)``, or ``(B, C - 1)`` ordinal logits for an ordinal head.
        """
        return self.forward_head(self.forward_features(x, mask))

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        return {
            ARCHITECTURE_KEY: "disc_classifier",
            "encoder": model_config(self.encoder),
            "num_classes": self.num_classes,
            "pool": model_config(self.pool),
            "mode": self.mode,
            "feature_dim": self.feature_dim,
            "head_kind": self.head_kind,
        }


@register_model("disc_classifier")
def _build_disc_classifier(
    *,
    encoder: Mapping[str, object],
    num_classes: int = _NUM_GRADES,
    pool: Mapping[str, object] | None = None,
    mode: TrainingMode = "finetune",
    feature_dim: int = ENCODER_DIM,
    head_kind: HeadKind = "softmax",  # absent from checkpoints written before the option
) -> nn.Module:
    return DiscClassifier(
        build_model(encoder),
        num_classes,
        build_model(pool) if pool is not None else None,
        mode=mode,
        feature_dim=feature_dim,
        head_kind=head_kind,
    )


# ------------------------------------------------------------------ shared with ConditionClassifier
def _check_head(num_classes: int, feature_dim: int, head_kind: str) -> None:
    """Validate the head settings of a classifier (``ValueError`` naming the bad value)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if feature_dim < 1:
        raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
    if head_kind not in HEAD_KINDS:
        raise ValueError(f"head_kind must be one of {HEAD_KINDS}, got {head_kind!r}")


def _grading_head(feature_dim: int, num_classes: int, head_kind: HeadKind) -> nn.Module:
    """The paper's linear layer (``"softmax"``) or an :class:`OrdinalHead`, ``(B, D) -> (B, C)``."""
    if head_kind == "softmax":
        return nn.Linear(feature_dim, num_classes)
    return OrdinalHead(feature_dim, num_classes, kind=head_kind)


def _check_mode(mode: str, encoder: nn.Module) -> None:
    """Refuse an unknown mode, or ``"finetune"`` for an encoder without the ResNet children."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "finetune":
        children = dict(encoder.named_children())
        missing = [name for name in FINETUNE_FROZEN_MODULES if name not in children]
        if missing:
            raise ValueError(
                f"mode 'finetune' freezes encoder children {FINETUNE_FROZEN_MODULES}, but "
                f"{type(encoder).__name__} has no {missing}"
            )


def _frozen_parts(encoder: nn.Module, mode: TrainingMode) -> Iterator[nn.Module]:
    """The parts of ``encoder`` that ``mode`` freezes (paper Sec. 4.4, Table 1)."""
    if mode == "linear_probe":
        yield encoder
    elif mode == "finetune":
        for name in FINETUNE_FROZEN_MODULES:
            yield getattr(encoder, name)


def _param_groups(
    backbone_modules: Iterable[nn.Module],
    head_modules: Iterable[nn.Module],
    backbone_lr: float,
    head_lr: float,
) -> list[dict[str, object]]:
    """``backbone`` and ``head`` optimizer groups of the trainable parameters (none: left out)."""
    for name, value in (("backbone_lr", backbone_lr), ("head_lr", head_lr)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    backbone = [p for m in backbone_modules for p in m.parameters() if p.requires_grad]
    head = [p for m in head_modules for p in m.parameters() if p.requires_grad]
    groups: list[dict[str, object]] = []
    if backbone:
        groups.append({"name": "backbone", "params": backbone, "lr": backbone_lr})
    if head:
        groups.append({"name": "head", "params": head, "lr": head_lr})
    return groups
