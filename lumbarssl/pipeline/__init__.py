"""The paper's stages as functions: pretraining, supervised grading, localizer, evaluation, predict.

Each stage takes one frozen config dataclass whose defaults are the paper's hyper-parameters;
the ``lumbarssl`` command line and ``examples/reproduce_paper.py`` are thin layers over them.
"""

from lumbarssl.data.datasets import SeriesLocalizerDataset
from lumbarssl.data.splits import Splits, localizer_splits, make_splits
from lumbarssl.pipeline._common import MODEL_FILE, STAGE_CONFIG_FILE
from lumbarssl.pipeline.auto_stages import (
    HeatmapConfig,
    SliceSelectorConfig,
    run_heatmap_training,
    run_slice_selector_training,
)
from lumbarssl.pipeline.condition_inference import ConditionGrader, grade_condition_directory
from lumbarssl.pipeline.conditions import (
    ConditionFinetuneConfig,
    condition_epoch_metrics,
    run_condition_finetuning,
)
from lumbarssl.pipeline.config import StageConfig, param
from lumbarssl.pipeline.convert import convert_checkpoint, legacy_recipe, load_recipe
from lumbarssl.pipeline.evaluate import (
    CALIBRATION_KEY,
    CONDITION_CALIBRATION_KEY,
    EPOCH_METRICS,
    ClassifierPredictions,
    EvaluateConfig,
    calibrate_by_condition,
    calibration_from_metadata,
    class_logits,
    condition_calibrations_from_metadata,
    condition_summary,
    epoch_metrics,
    predict_classifier,
    run_evaluation,
    summarize,
    table1_summary,
    write_condition_predictions,
)
from lumbarssl.pipeline.finetune import FinetuneConfig, load_pretrained_encoder, run_finetuning
from lumbarssl.pipeline.inference import (
    BatchResult,
    DiscGrader,
    LevelPrediction,
    NoSagittalT2Error,
    NotSagittalError,
    SeriesPrediction,
    WrongSeriesTypeError,
    find_series,
    grade_directory,
    prediction_rows,
    write_prediction,
)
from lumbarssl.pipeline.localize import (
    LocalizerConfig,
    run_localizer_training,
)
from lumbarssl.pipeline.pretrain import PretrainConfig, pretraining_rows, run_pretraining
from lumbarssl.pipeline.result import StageResult

__all__ = [
    "CALIBRATION_KEY",
    "CONDITION_CALIBRATION_KEY",
    "EPOCH_METRICS",
    "MODEL_FILE",
    "STAGE_CONFIG_FILE",
    "BatchResult",
    "ClassifierPredictions",
    "ConditionFinetuneConfig",
    "ConditionGrader",
    "DiscGrader",
    "EvaluateConfig",
    "FinetuneConfig",
    "HeatmapConfig",
    "LevelPrediction",
    "LocalizerConfig",
    "NoSagittalT2Error",
    "NotSagittalError",
    "PretrainConfig",
    "SeriesLocalizerDataset",
    "SeriesPrediction",
    "SliceSelectorConfig",
    "Splits",
    "StageConfig",
    "StageResult",
    "WrongSeriesTypeError",
    "calibrate_by_condition",
    "calibration_from_metadata",
    "class_logits",
    "condition_calibrations_from_metadata",
    "condition_epoch_metrics",
    "condition_summary",
    "convert_checkpoint",
    "epoch_metrics",
    "find_series",
    "grade_condition_directory",
    "grade_directory",
    "legacy_recipe",
    "load_pretrained_encoder",
    "load_recipe",
    "localizer_splits",
    "make_splits",
    "param",
    "predict_classifier",
    "prediction_rows",
    "pretraining_rows",
    "run_condition_finetuning",
    "run_evaluation",
    "run_finetuning",
    "run_heatmap_training",
    "run_localizer_training",
    "run_pretraining",
    "run_slice_selector_training",
    "summarize",
    "table1_summary",
    "write_condition_predictions",
    "write_prediction",
]
