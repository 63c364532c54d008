"""One grader for the five RSNA 2024 conditions: per-sequence or shared encoders, one head each.

The paper grades spinal canal stenosis only (Sec. 3.1); the competition grades five conditions
on three sequences (:data:`~lumbarssl.layout.CONDITION_SEQUENCE`). :class:`ConditionClassifier`
keeps the paper's classifier per condition, an encoder and a linear (or ordinal) head, and
either shares one encoder across all conditions or gives each sequence its own, trained with
the same three regimes (Table 1) as :class:`~lumbarssl.models.DiscClassifier`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

import torch
from torch import Tensor, nn

from lumbarssl.layout import CONDITION_SEQUENCE, CONDITIONS, SERIES_DESCRIPTIONS
from lumbarssl.models.classifier import (
    BACKBONE_LR,
    HEAD_LR,
    HeadKind,
    TrainingMode,
    _check_head,
    _grading_head,
    _GradingModel,
    _param_groups,
)
from lumbarssl.models.encoder import ENCODER_DIM
from lumbarssl.models.registry import ARCHITECTURE_KEY, build_model, model_config, register_model

if TYPE_CHECKING:
    pass

__all__ = ["ConditionClassifier"]

#: Normal/Mild, Moderate, Severe (paper Sec. 3.1).
_NUM_GRADES: Final[int] = 3


class ConditionClassifier(_GradingModel):
    """Grade ROIs of any of the five conditions: its sequence's encoder, then its condition's head.

    With one (shared) encoder every ROI goes through it; with per-sequence encoders (a mapping
    from each of :data:`~lumbarssl.layout.SERIES_DESCRIPTIONS` to an encoder) an ROI of
    condition ``k`` goes only through the encoder of ``CONDITION_SEQUENCE[CONDITIONS[k]]``.
    Each condition has its own head: the paper's linear layer (Sec. 3.5) or an
    :class:`~lumbarssl.models.OrdinalHead`. An encoder sees all its ROIs of a batch in one call,
    so its BatchNorm statistics are those of the batch's ROIs of its sequence.

    ``mode`` freezes each encoder exactly as :class:`~lumbarssl.models.DiscClassifier` does
    (``"scratch"``: nothing; ``"linear_probe"``: the whole encoder, its BatchNorm kept in eval
    mode; ``"finetune"``: the stem and ``layer1``-``layer3``; paper Sec. 4.4, Table 1).

    Args:
        encoders: One encoder shared by all conditions, or a mapping from every sequence name
            of :data:`~lumbarssl.layout.SERIES_DESCRIPTIONS` to its encoder; each maps
            ``(N, 1, H, W)`` to ``(N, D)``.
        num_classes: Number of grades ``C`` (3; Sec. 3.1).
        mode: ``"scratch"``, ``"linear_probe"`` or ``"finetune"``.
        feature_dim: Encoder output size ``D`` (512 for ResNet-18).
        head_kind: ``"softmax"`` (default), ``"corn"`` or ``"cumulative"``, for all heads.

    Raises:
        ValueError: On an unknown mode or head kind, ``num_classes < 2``, ``feature_dim < 1``,
            a mapping whose keys are not exactly the three sequences, or ``"finetune"`` with
            an encoder lacking the ResNet children.

    Shape:
        - x: ``(B, 1, H, W)``
        - condition: ``(B,)`` int64, index into :data:`~lumbarssl.layout.CONDITIONS`
        - output: ``(B, C)`` logits; ``(B, C - 1)`` ordinal logits for an ordinal head

    Example:
        >>> from lumbarssl.models import resnet18_encoder
        >>> model = ConditionClassifier(resnet18_encoder(in_chans=1), mode="scratch")
        >>> model(torch.randn(4, 1, 64, 64), torch.tensor([0, 1, 3, 4])).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        encoders: nn.Module | Mapping[str, nn.Module],
        num_classes: int = _NUM_GRADES,
        *,
        mode: TrainingMode = "finetune",  # the paper's model (Sec. 4.4)
        feature_dim: int = ENCODER_DIM,
        head_kind: HeadKind = "softmax",  # the paper's head (Sec. 3.5)
    ) -> None:
        super().__init__()
        _check_head(num_classes, feature_dim, head_kind)
        if isinstance(encoders, nn.Module):
            #: Sequence of each encoder; empty for one shared encoder.
            self.sequences: tuple[str, ...] = ()
            modules = [encoders]
        else:
            if set(encoders) != set(SERIES_DESCRIPTIONS):
                raise ValueError(
                    f"per-sequence encoders need exactly the keys {SERIES_DESCRIPTIONS}, got "
                    f"{tuple(encoders)}"
                )
            self.sequences = SERIES_DESCRIPTIONS
            modules = [encoders[name] for name in SERIES_DESCRIPTIONS]
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.head_kind: HeadKind = head_kind
        self.encoders = nn.ModuleList(modules)
        self.heads = nn.ModuleList(
            _grading_head(feature_dim, num_classes, head_kind) for _ in CONDITIONS
        )
        #: Index into :attr:`encoders` of each condition of ``CONDITIONS``.
        self.encoder_of_condition: tuple[int, ...] = tuple(
            self.sequences.index(CONDITION_SEQUENCE[c]) if self.sequences else 0 for c in CONDITIONS
        )
        self.mode: TrainingMode = mode
        self.set_mode(mode)

    @property
    def shared(self) -> bool:
        """Whether one encoder serves every condition."""
        return not self.sequences

    @property
    def is_ordinal(self) -> bool:
        """Whether the heads are ordinal (``head_kind`` ``"corn"`` or ``"cumulative"``)."""
        return self.head_kind != "softmax"

    # ----------------------------------------------------------------------------- modes
    def _encoders(self) -> Iterable[nn.Module]:
        return self.encoders

    def param_groups(
        self,
        backbone_lr: float = BACKBONE_LR,  # layer4 in fine-tuning, paper Sec. 4.4
        head_lr: float = HEAD_LR,  # classification heads, paper Sec. 4.4
    ) -> list[dict[str, object]]:
        """Parameter groups as :meth:`DiscClassifier.param_groups` gives them.

        ``backbone``: the trainable parameters of every encoder; ``head``: those of the five
        heads. A group with no trainable parameter is left out.

        Args:
            backbone_lr: Learning rate of the trainable encoder parameters.
            head_lr: Learning rate of the heads.

        Returns:
            A list of ``{"name", "params", "lr"}`` dicts.

        Raises:
            ValueError: If a learning rate is negative.
        """
        return _param_groups(self.encoders, self.heads, backbone_lr, head_lr)

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        """Grade a batch of ROIs, each by its condition's encoder and head.

        Args:
            x: ROIs of shape ``(B, 1, H, W)``.
            condition: int64 tensor of shape ``(B,)``, each entry an index into
                :data:`~lumbarssl.layout.CONDITIONS`.

        Returns:
            Logits of shape ``(B, C)``, or ``(B, C - 1)`` ordinal logits for ordinal heads;
            row ``i`` is the output of condition ``condition[i]``'s head.

        Raises:
            ValueError: On a shape mismatch or a condition outside ``[0, 5)``.
        """
        if x.ndim != 4:
            raise ValueError(f"expected x of shape (B, 1, H, W), got {tuple(x.shape)}")
        if condition.shape != x.shape[:1] or condition.dtype != torch.int64:
            raise ValueError(
                f"expected condition int64 of shape (B,) = ({x.shape[0]},), got "
                f"{condition.dtype} of shape {tuple(condition.shape)}"
            )
        if len(condition) and (int(condition.min()) < 0 or int(condition.max()) >= len(CONDITIONS)):
            raise ValueError(
                f"condition must index CONDITIONS (0..{len(CONDITIONS) - 1}), got values "
                f"{int(condition.min())}..{int(condition.max())}"
            )
        width = self.num_classes - 1 if self.is_ordinal else self.num_classes
        encoder_ids = torch.tensor(self.encoder_of_condition, device=condition.device)[condition]
        out: Tensor | None = None
        for e, encoder in enumerate(self.encoders):
            rows = torch.nonzero(encoder_ids == e).flatten()
            if len(rows) == 0:
                continue
            features: Tensor = encoder(x[rows])
            if features.ndim != 2 or features.shape[1] != self.feature_dim:
                raise ValueError(
                    f"encoder returned shape {tuple(features.shape)}, expected "
                    f"(N, feature_dim={self.feature_dim})"
                )
            conditions = condition[rows]
            for k, head in enumerate(self.heads):
                picked = torch.nonzero(conditions == k).flatten()
                if len(picked) == 0:
                    continue
                logits: Tensor = head(features[picked])
                if out is None:
                    out = logits.new_zeros((x.shape[0], width))
                out[rows[picked]] = logits
        if out is None:  # an empty batch
            return x.new_zeros((0, width))
        return out

    def to_config(self) -> dict[str, object]:
        """JSON-serialisable config for :func:`~lumbarssl.models.build_model`."""
        config: dict[str, object] = {ARCHITECTURE_KEY: "condition_classifier"}
        if self.shared:
            config["encoder"] = model_config(self.encoders[0])
        else:
            config["sequence_encoders"] = {
                name: model_config(encoder)
                for name, encoder in zip(self.sequences, self.encoders, strict=True)
            }
        return config | {
            "num_classes": self.num_classes,
            "mode": self.mode,
            "feature_dim": self.feature_dim,
            "head_kind": self.head_kind,
        }


@register_model("condition_classifier")
def _build_condition_classifier(
    *,
    encoder: Mapping[str, object] | None = None,
    sequence_encoders: Mapping[str, Mapping[str, object]] | None = None,
    num_classes: int = _NUM_GRADES,
    mode: TrainingMode = "finetune",
    feature_dim: int = ENCODER_DIM,
    head_kind: HeadKind = "softmax",
) -> nn.Module:
    if (encoder is None) == (sequence_encoders is None):
        raise ValueError("a condition_classifier config needs encoder or sequence_encoders")
    encoders: nn.Module | dict[str, nn.Module] = (
        build_model(encoder)
        if encoder is not None
        else {name: build_model(c) for name, c in (sequence_encoders or {}).items()}
    )
    return ConditionClassifier(
        encoders, num_classes, mode=mode, feature_dim=feature_dim, head_kind=head_kind
    )
