"""Encoders, heads, pooling, the disc classifier, the 2.5D localizers and safe checkpoints.

Every module here can describe itself as a JSON config (:func:`model_config`) that
:func:`build_model` turns back into the architecture, which is what lets
:func:`load_checkpoint` rebuild a model without unpickling any class.
"""

from lumbarssl.models.checkpoint import (
    CHECKPOINT_FORMAT,
    DATA_SOURCES,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from lumbarssl.models.classifier import (
    BACKBONE_LR,
    FINETUNE_FROZEN_MODULES,
    HEAD_LR,
    DiscClassifier,
    TrainingMode,
)
from lumbarssl.models.condition import ConditionClassifier
from lumbarssl.models.contrastive import ContrastiveModel
from lumbarssl.models.encoder import ENCODER_DIM, adapt_stem_weight, resnet18_encoder
from lumbarssl.models.heads import ProjectionHead
from lumbarssl.models.heatmap import HeatmapLocalizer
from lumbarssl.models.localizer import Localizer2p5D
from lumbarssl.models.ordinal import OrdinalHead
from lumbarssl.models.pool import DeepSetsDiscPool, masked_mean
from lumbarssl.models.registry import (
    ARCHITECTURE_KEY,
    ConfigurableModel,
    available_models,
    build_model,
    model_config,
    register_model,
)
from lumbarssl.models.slice_select import SliceSelector

__all__ = [
    "ARCHITECTURE_KEY",
    "BACKBONE_LR",
    "CHECKPOINT_FORMAT",
    "DATA_SOURCES",
    "ENCODER_DIM",
    "FINETUNE_FROZEN_MODULES",
    "HEAD_LR",
    "Checkpoint",
    "CheckpointError",
    "ConditionClassifier",
    "ConfigurableModel",
    "ContrastiveModel",
    "DeepSetsDiscPool",
    "DiscClassifier",
    "HeatmapLocalizer",
    "Localizer2p5D",
    "OrdinalHead",
    "ProjectionHead",
    "SliceSelector",
    "TrainingMode",
    "adapt_stem_weight",
    "available_models",
    "build_model",
    "load_checkpoint",
    "masked_mean",
    "model_config",
    "read_checkpoint",
    "register_model",
    "resnet18_encoder",
    "save_checkpoint",
]
