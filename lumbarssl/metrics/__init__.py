"""Grading metrics with CIs, localisation RMSE, calibration, the RSNA metric and submission.

Grades are the class indices 0 = Normal/Mild, 1 = Moderate, 2 = Severe
(:data:`lumbarssl.layout.SEVERITY_TO_LABEL`).
"""

from lumbarssl.metrics.bootstrap import ConfidenceInterval, bootstrap_ci, bootstrap_distribution
from lumbarssl.metrics.calibration import (
    CALIBRATION_METHODS,
    Calibration,
    CalibrationMethod,
    NonPositiveTemperatureError,
    fit_calibration,
)
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
from lumbarssl.metrics.rsna import (
    RSNA_CONDITION_GROUPS,
    RSNA_SAMPLE_WEIGHTS,
    RSNAScore,
    RSNASpinalScore,
    condition_group,
    rsna_score,
    rsna_spinal_score,
)
from lumbarssl.metrics.submission import (
    SUBMISSION_COLUMNS,
    SubmissionRow,
    make_row_id,
    parse_row_id,
    read_solution,
    read_submission,
    score_submission,
    study_rows,
    write_submission,
)

__all__ = [
    "CALIBRATION_METHODS",
    "RSNA_CONDITION_GROUPS",
    "RSNA_SAMPLE_WEIGHTS",
    "SUBMISSION_COLUMNS",
    "TABLE1_COLUMNS",
    "Calibration",
    "CalibrationMethod",
    "ConfidenceInterval",
    "LocalizationSummary",
    "NonPositiveTemperatureError",
    "RSNAScore",
    "RSNASpinalScore",
    "SubmissionRow",
    "accuracy",
    "balanced_accuracy",
    "bootstrap_ci",
    "bootstrap_distribution",
    "condition_group",
    "confusion_matrix",
    "disc_report",
    "fit_calibration",
    "localization_errors",
    "localization_rmse",
    "localization_summary",
    "make_row_id",
    "parse_row_id",
    "per_class_recall",
    "read_solution",
    "read_submission",
    "report_from_confusion",
    "rsna_score",
    "rsna_spinal_score",
    "score_submission",
    "severe_to_normal_error",
    "study_rows",
    "write_submission",
]
