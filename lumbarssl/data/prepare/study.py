"""One study, or a whole dataset in memory: the extraction ``prepare`` runs per task.

Chooses between the spinal canal path (:mod:`lumbarssl.data.prepare.extract`) and the
all-conditions path (:mod:`lumbarssl.data.prepare.conditions`), which itself uses the first;
this module sits above both so that neither imports the other back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lumbarssl.data.cache import ROIS_NPY, DiscTable, PreparedCache, compute_roi_stats
from lumbarssl.data.constants import IMAGES_DIR
from lumbarssl.data.dicom import DicomReadError
from lumbarssl.data.index import DiscIndex, DiscRecord, read_index
from lumbarssl.data.prepare.conditions import extract_condition_study, read_condition_index
from lumbarssl.data.prepare.config import PrepareConfig
from lumbarssl.data.prepare.extract import (
    StudyOutput,
    _file_skip,
    extract_series,
    group_by_study,
    study_arrays,
)
from lumbarssl.data.skips import RSNADataError, Skip, SkipReason

__all__ = ["extract_study", "prepare_in_memory", "read_prepare_index"]


def extract_study(
    data_dir: Path, study_id: int, discs: Sequence[DiscRecord], config: PrepareConfig
) -> StudyOutput:
    """Extract every disc of one study; in ``"skip"`` mode an unexpected error skips it.

    With ``config.conditions == "all"`` every (condition, side, level) row is extracted by
    :func:`lumbarssl.data.prepare.conditions.extract_condition_study`.
    """
    extract: Callable[[Path, int, Sequence[DiscRecord], PrepareConfig], StudyOutput] | None = (
        extract_condition_study if config.conditions != "spinal" else None
    )
    out = StudyOutput()
    by_series: dict[int, list[DiscRecord]] = {}
    for disc in discs:
        by_series.setdefault(disc.series_id, []).append(disc)
    study_dir = data_dir / IMAGES_DIR / str(study_id)
    try:
        if extract is not None:
            out = extract(data_dir, study_id, discs, config)
        else:
            for series_id, series_discs in by_series.items():
                extract_series(study_dir / str(series_id), series_discs, config, out)
    except (RSNADataError, DicomReadError):
        raise
    except Exception as exc:
        if config.on_error == "raise":
            raise
        detail = f"unexpected {type(exc).__name__} while reading the study: {exc}"
        skips = [_file_skip(d, SkipReason.INTERNAL_ERROR, detail, study_dir) for d in discs]
        return StudyOutput(skips=skips)
    return out


def read_prepare_index(data_dir: Path, config: PrepareConfig) -> DiscIndex:
    """The rows ``prepare`` extracts: spinal canal discs, or all conditions' rows."""
    if config.conditions != "spinal":
        return read_condition_index(data_dir, on_error=config.on_error)
    return read_index(data_dir, on_error=config.on_error)


def prepare_in_memory(
    data_dir: str | Path, config: PrepareConfig | None = None
) -> tuple[PreparedCache, tuple[Skip, ...]]:
    """Run the extraction of :func:`prepare_cache` without writing anything.

    Args:
        data_dir: RSNA 2024 layout.
        config: Settings; the paper's defaults when ``None``.

    Returns:
        A cache held in memory (``roi_path`` empty) and the skipped rows.
    """
    config = config or PrepareConfig()
    data_dir = Path(data_dir)
    index = read_prepare_index(data_dir, config)
    rows: list[dict[str, object]] = []
    skips: list[Skip] = list(index.skips)
    blocks: dict[str, list[np.ndarray]] = {}
    n_localizer = 0
    for study, discs in group_by_study(index.discs).items():
        out = extract_study(data_dir, study, discs, config)
        for row in out.rows:
            row["localizer_index"] = int(str(row["localizer_index"])) + n_localizer
            row["roi_path"] = ""
        rows.extend(out.rows)
        skips.extend(out.skips)
        n_localizer += len(out.localizer)
        for name, array in study_arrays(out, config).items():
            blocks.setdefault(name, []).append(array)
    empty = study_arrays(StudyOutput(), config)
    arrays = {name: np.concatenate([*blocks.get(name, []), empty[name]]) for name in empty}
    mean, std = compute_roi_stats(arrays[ROIS_NPY])
    meta = {"config": config.to_dict(), "roi_stats": {"mean": mean, "std": std}}
    return PreparedCache(DiscTable.from_rows(rows), meta=meta, arrays=arrays), tuple(skips)
