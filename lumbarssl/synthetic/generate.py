"""Writing a synthetic dataset in the RSNA 2024 layout, study by study.

Output (``OUT_DIR``)::

    train.csv                      study_id + 25 condition/level columns
    train_label_coordinates.csv    study_id,series_id,instance_number,condition,level,x,y
    train_series_descriptions.csv  study_id,series_id,series_description
    train_images/<study_id>/<series_id>/<instance_number>.dcm
    synthetic_truth.csv            study_id,level,r,grade (the grade before reader noise),
                                   then (generator 2.0) true_instance,true_x,true_y,midline_index
    synthetic_meta.json            generator version, seed, parameters, Bayes ceiling, counts

Studies are rendered by worker processes in any order but their rows are written in study order,
and every study draws from its own random streams, so the output is the same byte for byte
whatever the number of workers. Nothing is held per study once it is written: memory does not grow
with the number of studies.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from tqdm import tqdm

from lumbarssl import __version__
from lumbarssl._core.atomic import atomic_write
from lumbarssl.errors import OutputExistsError
from lumbarssl.layout import (
    CONDITION_SLUGS,
    CONDITIONS,
    COORDINATE_COLUMNS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVEL_SLUGS,
    LEVELS,
    SERIES_COLUMNS,
    SERIES_CSV,
    SEVERITIES,
    SPINAL_CANAL,
    TRAIN_COLUMNS,
    TRAIN_CSV,
)
from lumbarssl.synthetic.ceiling import BayesCeiling, bayes_ceiling
from lumbarssl.synthetic.conditions import condition_ceilings, grade_name, true_posterior_score
from lumbarssl.synthetic.config import MULTI_CONDITION_FIELDS, SyntheticConfig
from lumbarssl.synthetic.dicom_io import SeriesWriter, mr_template
from lumbarssl.synthetic.plan import (
    PIXEL_STREAM,
    SeriesPlan,
    StudyPlan,
    config_digest,
    instance_uid,
    sample_study_plan,
    study_rng,
)
from lumbarssl.synthetic.render import orientation_of, render_series

__all__ = [
    "CONDITION_TRUTH_COLUMNS",
    "CONDITION_TRUTH_CSV",
    "META_JSON",
    "TRUTH_COLUMNS",
    "TRUTH_COLUMNS_V1",
    "TRUTH_CSV",
    "SyntheticSummary",
    "generate_dataset",
    "write_study",
]

#: Ground truth of every graded disc.
TRUTH_CSV = "synthetic_truth.csv"
#: Its columns (generator 2.0): ``grade`` is the grade before reader noise, ``true_instance``
#: the Sagittal T2 InstanceNumber nearest to the level's canal midline (the annotated one),
#: ``true_x``/``true_y`` the noise-free canal centre (pixels) that the annotation misses by the
#: reader's offset, ``midline_index`` the midline's lateral position in spatial slice units.
TRUTH_COLUMNS: tuple[str, ...] = (
    "study_id",
    "level",
    "r",
    "grade",
    "true_instance",
    "true_x",
    "true_y",
    "midline_index",
)
#: Columns that generator 1.0 writes.
TRUTH_COLUMNS_V1: tuple[str, ...] = TRUTH_COLUMNS[:4]
#: (``conditions="all"``) Ground truth of the 20 foraminal and subarticular targets.
CONDITION_TRUTH_CSV = "synthetic_truth_conditions.csv"
#: Its columns: ``grade`` is the grade before reader noise, ``series_id``/``true_instance`` the
#: annotated series and instance, ``true_x``/``true_y`` the position without annotator error.
CONDITION_TRUTH_COLUMNS: tuple[str, ...] = (
    "study_id",
    "condition",
    "level",
    "r",
    "grade",
    "series_id",
    "true_instance",
    "true_x",
    "true_y",
)
#: Parameters, generator version and Bayes ceiling of the dataset.
META_JSON = "synthetic_meta.json"
# The conditions other than spinal canal stenosis are not rendered; their cells hold this.
_UNRENDERED_GRADE = SEVERITIES[0]
_MISSING = "missing"
# Study-level work units handed to one worker at a time (amortises inter-process overhead).
_MAX_CHUNK = 8
# Window of the stored images, as fractions of the series' intensity scale.
_WINDOW = (0.45, 0.9)


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`generate_dataset` wrote.

    Attributes:
        out_dir: The dataset directory.
        config: The parameters used.
        n_studies: Studies written.
        n_series: Series written (all descriptions).
        n_images: DICOM files written.
        label_counts: Recorded spinal canal grades in ``train.csv`` by severity, plus
            ``"missing"`` for empty cells.
        series_counts: Series by description.
        ceiling: Scores of the Bayes-optimal classifier that knows ``r``.
        seconds: Wall-clock time of the run.
        condition_label_counts: (``conditions="all"``) Recorded grades by condition name
            (``"missing"`` for empty cells); empty otherwise.
        condition_ceilings: (``conditions="all"``) The Bayes ceiling of each condition.
        true_posterior: (``conditions="all"``) The RSNA 2024 score of the true posterior
            (:func:`~lumbarssl.synthetic.conditions.true_posterior_score`).
    """

    out_dir: Path
    config: SyntheticConfig
    n_studies: int
    n_series: int
    n_images: int
    label_counts: dict[str, int]
    series_counts: dict[str, int]
    ceiling: BayesCeiling
    seconds: float = field(compare=False)
    condition_label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    condition_ceilings: dict[str, BayesCeiling] = field(default_factory=dict)
    true_posterior: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """A few lines for people: counts, label frequencies and the ceiling."""
        graded = sum(self.label_counts[s] for s in SEVERITIES)
        freqs = ", ".join(
            f"{s} {self.label_counts[s]} ({100.0 * self.label_counts[s] / max(graded, 1):.1f} %)"
            for s in SEVERITIES
        )
        c = self.ceiling
        recalls = "/".join(f"{v:.3f}" for v in c.recalls)
        return "\n".join(
            [
                f"Synthetic RSNA-layout data (generator {self.config.generator_version}, seed "
                f"{self.config.seed}): {self.n_studies} studies, {self.n_series} series, "
                f"{self.n_images} images in {self.out_dir} ({self.seconds:.1f} s)",
                f"Spinal canal labels: {freqs}, {self.label_counts[_MISSING]} missing",
                "Bayes ceiling (classifier that knows r exactly, balanced-accuracy-optimal rule): "
                f"balanced accuracy {c.balanced_accuracy:.3f}, recall N/M/S {recalls}, "
                f"severe-to-normal {100.0 * c.severe_to_normal_rate:.2f} %",
                f"  posterior-argmax rule for comparison: balanced accuracy "
                f"{c.argmax_balanced_accuracy:.3f}, accuracy {c.argmax_accuracy:.3f}",
                *self._describe_conditions(),
            ]
        )

    def _describe_conditions(self) -> list[str]:
        lines = []
        for name, counts in self.condition_label_counts.items():
            graded = max(sum(counts[s] for s in SEVERITIES), 1)
            freqs = "/".join(f"{100.0 * counts[s] / graded:.1f}" for s in SEVERITIES)
            ceiling = self.condition_ceilings[name].balanced_accuracy
            lines.append(f"{name}: N/M/S {freqs} %, ceiling balanced accuracy {ceiling:.3f}")
        if self.true_posterior:
            lines.append(
                f"RSNA score of the true posterior (25 targets): {self.true_posterior['score']:.4f}"
            )
        return lines


@dataclass(frozen=True)
class _StudyRows:
    train: list[str]
    coordinates: list[list[str]]
    series: list[list[str]]
    truth: list[list[str]]
    n_images: int
    condition_truth: list[list[str]] = field(default_factory=list)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    config: SyntheticConfig,
    *,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> SyntheticSummary:
    """Write ``config.n_studies`` synthetic studies in the RSNA 2024 layout.

    Args:
        out_dir: Directory to write; created if needed.
        config: Generator parameters, seed included.
        workers: Processes rendering studies; the output does not depend on it.
        progress: Show a progress bar.
        overwrite: Replace an existing dataset in ``out_dir`` (only the files this function
            writes are removed).

    Returns:
        Counts, label frequencies and the Bayes ceiling.

    Raises:
        ValueError: If ``workers < 1``.
        FileExistsError: If ``out_dir`` already holds a dataset and ``overwrite`` is false.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    _prepare(out, overwrite)
    started = time.perf_counter()
    ceiling = bayes_ceiling(config)
    multi = config.conditions == "all"
    labels: Counter[str] = Counter(dict.fromkeys((*SEVERITIES, _MISSING), 0))
    condition_labels = {
        name: Counter(dict.fromkeys((*SEVERITIES, _MISSING), 0)) for name in CONDITIONS[1:]
    }
    condition_truth = io.StringIO()
    condition_writer = csv.writer(condition_truth, lineterminator="\n")
    condition_writer.writerow(CONDITION_TRUTH_COLUMNS)
    series_counts: Counter[str] = Counter()
    n_series = n_images = 0
    names = (TRAIN_CSV, COORDINATES_CSV, SERIES_CSV, TRUTH_CSV)
    truth_columns = TRUTH_COLUMNS_V1 if config.generator_version == "1.0" else TRUTH_COLUMNS
    headers = (TRAIN_COLUMNS, COORDINATE_COLUMNS, SERIES_COLUMNS, truth_columns)
    # The tables are small (a few rows per study): held in memory, each file is written once,
    # atomically, after the last study.
    buffers = [io.StringIO() for _ in names]
    with ExitStack() as stack:
        train, coords, series, truth = (csv.writer(b, lineterminator="\n") for b in buffers)
        for writer, header in zip((train, coords, series, truth), headers, strict=True):
            writer.writerow(header)
        rows_iter = _study_rows(config, out, workers)
        bar = stack.enter_context(
            tqdm(total=config.n_studies, disable=not progress, unit="study", desc="synth")
        )
        for rows in rows_iter:
            train.writerow(rows.train)
            coords.writerows(rows.coordinates)
            series.writerows(rows.series)
            truth.writerows(rows.truth)
            for cell in rows.train[1 : 1 + len(LEVEL_SLUGS)]:
                labels[cell or _MISSING] += 1
            if multi:
                condition_writer.writerows(rows.condition_truth)
                for k, name in enumerate(CONDITIONS[1:], start=1):
                    start = 1 + k * len(LEVEL_SLUGS)
                    for cell in rows.train[start : start + len(LEVEL_SLUGS)]:
                        condition_labels[name][cell or _MISSING] += 1
            series_counts.update(row[2] for row in rows.series)
            n_series += len(rows.series)
            n_images += rows.n_images
            bar.update()
    for name, buffer in zip(names, buffers, strict=True):
        _write_text(out / name, buffer.getvalue())
    if multi:
        _write_text(out / CONDITION_TRUTH_CSV, condition_truth.getvalue())
    summary = SyntheticSummary(
        out_dir=out,
        config=config,
        n_studies=config.n_studies,
        n_series=n_series,
        n_images=n_images,
        label_counts=dict(labels),
        series_counts=dict(sorted(series_counts.items())),
        ceiling=ceiling,
        seconds=time.perf_counter() - started,
        **(_condition_summary(config, condition_labels) if multi else {}),
    )
    _write_text(out / META_JSON, json.dumps(_meta(summary), indent=2) + "\n")
    return summary


def _condition_summary(config: SyntheticConfig, counts: dict[str, Counter[str]]) -> dict[str, Any]:
    ceilings = condition_ceilings(config)
    # The spinal canal's own ceiling is SyntheticSummary.ceiling; list all five here.
    label_counts = {name: dict(counts[name]) for name in CONDITIONS[1:]}
    return {
        "condition_label_counts": label_counts,
        "condition_ceilings": ceilings,
        "true_posterior": true_posterior_score(config),
    }


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")

    def write(handle: BinaryIO) -> None:
        handle.write(data)

    atomic_write(path, write)


def write_study(config: SyntheticConfig, out_dir: Path, index: int) -> _StudyRows:
    """Render and write study ``index``; return its CSV rows (the unit of work of a worker)."""
    plan = sample_study_plan(config, index)
    rng = study_rng(config, index, PIXEL_STREAM)
    key = config_digest(config)
    n_images = 0
    for series in plan.series:
        folder = out_dir / IMAGES_DIR / str(plan.study_id) / str(series.series_id)
        folder.mkdir(parents=True, exist_ok=True)
        writer = SeriesWriter(_template(plan, series))
        for image in render_series(plan, series, config, rng):
            writer.write(
                folder / f"{image.instance_number}.dcm",
                sop_instance_uid=instance_uid(key, index, series.series_id, image.instance_number),
                instance_number=image.instance_number,
                position=image.position,
                slice_location=image.slice_location,
                pixels=image.pixels,
            )
            n_images += 1
    return _rows(plan, n_images, v1=config.generator_version == "1.0")


def _template(plan: StudyPlan, series: SeriesPlan) -> Dataset:
    return mr_template(
        study_uid=plan.uid,
        series_uid=series.uid,
        frame_uid=plan.frame_uid,
        study_id=plan.study_id,
        series_number=series.series_number,
        description=series.description,
        rows=plan.size,
        columns=plan.size,
        pixel_spacing=plan.spacing,
        slice_thickness=series.slice_thickness,
        slice_spacing=series.slice_spacing,
        orientation=orientation_of(series),
        rescale=series.rescale,
        window=(_WINDOW[0] * series.intensity_scale, _WINDOW[1] * series.intensity_scale),
        echo_time=series.echo_time,
        repetition_time=series.repetition_time,
        study_date=plan.study_date,
    )


def _rows(plan: StudyPlan, n_images: int, *, v1: bool) -> _StudyRows:
    canal = ["" if d.recorded_grade is None else SEVERITIES[d.recorded_grade] for d in plan.discs]
    others = [_UNRENDERED_GRADE] * (len(CONDITION_SLUGS) - 1) * len(LEVEL_SLUGS)
    if plan.conditions:
        # Condition-major, level-minor, as TRAIN_COLUMNS (plan.conditions is in that order).
        by_key = {(c.condition, c.level): c for c in plan.conditions}
        others = [
            grade_name(by_key[condition, level].recorded_grade)
            for condition in CONDITIONS[1:]
            for level in LEVELS
        ]
    t2 = plan.sagittal_t2
    coordinates = [
        [
            str(plan.study_id),
            str(t2.series_id),
            str(d.instance_number),
            SPINAL_CANAL,
            d.level,
            f"{d.coordinate[0]:.6f}",
            f"{d.coordinate[1]:.6f}",
        ]
        for d in plan.discs
        if d.coordinate is not None
    ]
    coordinates += [
        [
            str(plan.study_id),
            str(c.series_id),
            str(c.instance_number),
            c.condition,
            c.level,
            f"{c.coordinate[0]:.6f}",
            f"{c.coordinate[1]:.6f}",
        ]
        for c in plan.conditions
        if c.coordinate is not None
    ]
    return _StudyRows(
        train=[str(plan.study_id), *canal, *others],
        coordinates=coordinates,
        series=[[str(plan.study_id), str(s.series_id), s.description] for s in plan.series],
        truth=[
            [str(plan.study_id), d.level, f"{d.r:.6f}", SEVERITIES[d.true_grade]]
            + (
                []
                if v1
                else [
                    str(d.instance_number),
                    f"{d.true_coordinate[0]:.6f}",
                    f"{d.true_coordinate[1]:.6f}",
                    f"{d.midline_index:.6f}",
                ]
            )
            for d in plan.discs
        ],
        n_images=n_images,
        condition_truth=[
            [
                str(plan.study_id),
                c.condition,
                c.level,
                f"{c.r:.6f}",
                SEVERITIES[c.true_grade],
                str(c.series_id),
                str(c.instance_number),
                f"{c.true_coordinate[0]:.6f}",
                f"{c.true_coordinate[1]:.6f}",
            ]
            for c in plan.conditions
        ],
    )


def _study_rows(config: SyntheticConfig, out: Path, workers: int) -> Iterator[_StudyRows]:
    work = partial(write_study, config, out)
    indices = range(config.n_studies)
    if workers == 1:
        yield from map(work, indices)
        return
    chunk = max(1, min(_MAX_CHUNK, config.n_studies // (4 * workers)))
    # Spawned workers do not inherit the parent's threads or locks (safe beside torch).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(work, indices, chunksize=chunk)


def _prepare(out: Path, overwrite: bool) -> None:
    outputs = [
        TRAIN_CSV,
        COORDINATES_CSV,
        SERIES_CSV,
        TRUTH_CSV,
        CONDITION_TRUTH_CSV,
        META_JSON,
        IMAGES_DIR,
    ]
    existing = [name for name in outputs if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out} already holds a dataset ({', '.join(existing)}); pass overwrite=True "
            "(--overwrite) to replace it"
        )
    for name in existing:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    (out / IMAGES_DIR).mkdir(parents=True)


def _meta(summary: SyntheticSummary) -> dict[str, Any]:
    config = summary.config
    parameters = config.to_dict()
    if config.conditions == "spinal":
        # Left out so spinal-only datasets keep their synthetic_meta.json byte for byte.
        for name in MULTI_CONDITION_FIELDS:
            parameters.pop(name)
    meta = {
        "generator": "lumbarssl.synthetic",
        "generator_version": config.generator_version,
        "lumbarssl_version": __version__,
        "seed": config.seed,
        "n_studies": summary.n_studies,
        "n_series": summary.n_series,
        "n_images": summary.n_images,
        "series_counts": summary.series_counts,
        "spinal_canal_label_counts": summary.label_counts,
        "parameters": parameters,
        "ceiling": {
            "description": (
                "Bayes-optimal classifier that knows the latent stenosis r exactly. "
                "balanced_accuracy, recalls, accuracy and severe_to_normal_rate are those of "
                "the balanced-accuracy-optimal rule argmax_k P(k|r)/pi_k (the ceiling for "
                "balanced accuracy); argmax_* are those of the posterior-argmax rule "
                "argmax_k P(k|r) (the ceiling for plain accuracy). Population values."
            ),
            **summary.ceiling.to_dict(),
        },
        "rendered_conditions": [SPINAL_CANAL],
        "unrendered_condition_value": _UNRENDERED_GRADE,
    }
    if config.conditions == "all":
        meta["rendered_conditions"] = list(CONDITIONS)
        del meta["unrendered_condition_value"]
        meta["conditions"] = {
            "label_counts": summary.condition_label_counts,
            "ceilings": {
                name: ceiling.to_dict() for name, ceiling in summary.condition_ceilings.items()
            },
            "true_posterior_rsna_score": {
                "description": (
                    "RSNA 2024 competition score (lower is better) of the true posterior "
                    "P(recorded grade | latent r) on all 25 targets, Monte Carlo over 20000 "
                    "studies of the label model: the floor an image model approaches."
                ),
                **summary.true_posterior,
            },
            "series_share": (
                "every study has Sagittal T2/STIR, Sagittal T1 and Axial T2 "
                "(p_sagittal_t1 and p_axial_t2 are not used)"
            ),
        }
    return meta
