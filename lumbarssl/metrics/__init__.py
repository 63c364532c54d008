"""Disc-level grading metrics with confidence intervals, localisation RMSE, RSNA metric."""

__all__: list[str] = []
