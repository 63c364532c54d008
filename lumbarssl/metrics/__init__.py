"""Disc-level grading metrics with confidence intervals, localisation RMSE, RSNA metric.

Grades are the class indices 0 = Normal/Mild, 1 = Moderate, 2 = Severe
(:data:`lumbarssl.data.constants.SEVERITY_TO_LABEL`).
"""

from lumbarssl.metrics.bootstrap import ConfidenceInterval, bootstrap_ci, bootstrap_distribution
from lumbarssl.metrics.classification import (
    TABLE1_COLUMNS,
    accuracy,
    balanced_accuracy,
    confusion_matrix,
    disc_report,
    per_class_recall,
    report_from_confusion,
    severe_to_normal_error,
)
from lumbarssl.metrics.localization import (
    LocalizationSummary,
    localization_errors,
    localization_rmse,
    localization_summary,
)
from lumbarssl.metrics.rsna import RSNA_SAMPLE_WEIGHTS, RSNASpinalScore, rsna_spinal_score

__all__ = [
    "RSNA_SAMPLE_WEIGHTS",
    "TABLE1_COLUMNS",
    "ConfidenceInterval",
    "LocalizationSummary",
    "RSNASpinalScore",
    "accuracy",
    "balanced_accuracy",
    "bootstrap_ci",
    "bootstrap_distribution",
    "confusion_matrix",
    "disc_report",
    "localization_errors",
    "localization_rmse",
    "localization_summary",
    "per_class_recall",
    "report_from_confusion",
    "rsna_spinal_score",
    "severe_to_normal_error",
]
