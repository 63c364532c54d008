"""All five RSNA 2024 conditions: the paper's future work, run end to end (beyond the paper).

    python examples/reproduce_paper.py --conditions all                 # synthetic, quick
    python examples/reproduce_paper.py --conditions all --data-dir RSNA_DIR --profile paper

The paper grades spinal canal stenosis on sagittal T2 and names multi-sequence MRI and ordinal
modelling as its next steps (Conclusion). This run grades all 25 RSNA 2024 targets (spinal
canal stenosis on Sagittal T2/STIR, left/right neural foraminal narrowing on Sagittal T1,
left/right subarticular stenosis on Axial T2, five levels each):

1. data: the synthetic phantom with ``conditions="all"`` (or an RSNA download);
2. prepare: one ROI per (condition, side, level) on the series and instance its coordinate
   names (:class:`lumbarssl.data.prepare.PrepareConfig` ``conditions="all"``);
3. contrastive pretraining over every ROI, twice: one shared encoder, and one encoder per
   sequence (the same number of epochs over each sequence's ROIs);
4. condition fine-tuning (:func:`lumbarssl.pipeline.run_condition_finetuning`): shared encoder
   with the paper's softmax + focal loss, per-sequence encoders with the same head, and the
   shared encoder with an ordinal (CORN) head; each fits one bcts calibration map on the
   validation ROIs of all conditions (``calibration_scope="shared"``, the stage's default);
5. the report ``report_conditions.md`` / ``.json``: Table 1 per condition with study-bootstrap
   CIs and the Bayes ceiling on the same discs, severe-to-normal error, one vs per-sequence
   encoders, ordinal vs softmax (paired CIs), calibrated vs raw, and the full RSNA 2024 score
   beside the score of the true posterior; one Figure-1-style picture per sequence.

It is driven by ``reproduce_paper.py`` (``--conditions all``), which keeps the paper's own run
unchanged. Every table names its data source, profile and seed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import lumbarssl
from lumbarssl import paper
from lumbarssl.data import prepare_cache
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.constants import IMAGES_DIR, LEVELS
from lumbarssl.data.dicom import read_series
from lumbarssl.data.prepare import PrepareConfig, format_summary
from lumbarssl.layout import CONDITION_SEQUENCE, CONDITIONS, SERIES_DESCRIPTIONS
from lumbarssl.metrics import (
    balanced_accuracy,
    bootstrap_ci,
    bootstrap_distribution,
    rsna_score,
)
from lumbarssl.pipeline import (
    ConditionFinetuneConfig,
    PretrainConfig,
    run_condition_finetuning,
    run_pretraining,
)
from lumbarssl.pipeline.finetune import FinetuneHead
from lumbarssl.reporting import COLUMNS, DataSource, Provenance, format_cell, markdown_table
from lumbarssl.reporting.figures import plot_rois
from lumbarssl.synthetic import META_JSON, SyntheticConfig, generate_dataset
from lumbarssl.synthetic.conditions import condition_ceilings, condition_label_config
from lumbarssl.synthetic.labels import grade_probabilities
from lumbarssl.training import LAST_CHECKPOINT, RuntimeConfig, select_device

#: Truth of the phantom's foraminal and subarticular targets (the canal's is in TRUTH_CSV).
TRUTH_CONDITIONS_CSV = "synthetic_truth_conditions.csv"
#: Short names of the sequences, for directory and figure names.
SEQUENCE_SLUGS: dict[str, str] = {
    "Sagittal T2/STIR": "sagittal_t2",
    "Sagittal T1": "sagittal_t1",
    "Axial T2": "axial_t2",
}


@dataclasses.dataclass(frozen=True)
class ConditionProfile:
    """Sizes of one all-condition run.

    Attributes:
        name: Profile name, printed on every table and figure.
        n_studies: Synthetic studies (ignored with ``--data-dir``).
        image_size_range: Synthetic image side range in pixels.
        slices_range: Synthetic slices per series.
        input_size: Classifier input side (ROIs are 96x96 and resized to this).
        pretrain_epochs: Contrastive epochs of each encoder.
        pretrain_batch: ROIs per contrastive step (3 views each).
        finetune_epochs: Epochs of each condition fine-tuning run.
        finetune_batch: ROIs per supervised step.
        n_resamples: Bootstrap resamples for the CIs.
    """

    name: str
    n_studies: int
    image_size_range: tuple[int, int]
    slices_range: tuple[int, int]
    input_size: int
    pretrain_epochs: int
    pretrain_batch: int
    finetune_epochs: int
    finetune_batch: int
    n_resamples: int


CONDITION_PROFILES: dict[str, ConditionProfile] = {
    # The paper's settings for every condition (meant for a GPU).
    "paper": ConditionProfile(
        name="paper",
        n_studies=1975,
        image_size_range=(256, 640),
        slices_range=(9, 20),
        input_size=paper.INPUT_SIZE,
        pretrain_epochs=paper.PRETRAIN_EPOCHS,
        pretrain_batch=64,
        finetune_epochs=paper.FINETUNE_EPOCHS,
        finetune_batch=paper.FINETUNE_BATCH_SIZE,
        n_resamples=1000,
    ),
    # Two CPU cores in about 19 minutes (18.8 measured idle; per-epoch speeds at 48 px: ~155
    # contrastive images/s, ~190 fine-tuning ROIs/s): 160 studies (~3,900 ROIs), 48 px inputs,
    # 4 contrastive epochs per encoder and 15 fine-tuning epochs per run (see
    # docs/reproduction.rst for what this costs in CI width).
    "quick": ConditionProfile(
        name="quick",
        n_studies=160,
        image_size_range=(256, 320),
        slices_range=(9, 12),
        input_size=48,
        pretrain_epochs=4,
        pretrain_batch=64,
        finetune_epochs=15,
        finetune_batch=32,
        n_resamples=1000,
    ),
    # Plumbing only.
    "smoke": ConditionProfile(
        name="smoke",
        n_studies=40,
        image_size_range=(256, 256),
        slices_range=(9, 9),
        input_size=32,
        pretrain_epochs=1,
        pretrain_batch=32,
        finetune_epochs=1,
        finetune_batch=32,
        n_resamples=50,
    ),
}

#: The fine-tuning runs compared: (key, title, encoder choice, head).
RUNS: tuple[tuple[str, str, str, FinetuneHead], ...] = (
    ("shared_softmax", "shared encoder, softmax + focal", "shared", "softmax"),
    ("per_sequence_softmax", "per-sequence encoders, softmax + focal", "per_sequence", "softmax"),
    ("shared_corn", "shared encoder, ordinal (CORN)", "shared", "corn"),
)


def banner(text: str) -> None:
    """Print a stage banner."""
    print(f"\n{'=' * 78}\n{text}\n{'=' * 78}", flush=True)


def resumable(stage_dir: Path) -> bool:
    """Resume a stage that an earlier run of this script started (or finished)."""
    return (stage_dir / LAST_CHECKPOINT).exists()


def ensure_data(
    data_dir_arg: str | None, profile: ConditionProfile, out: Path, seed: int, workers: int
) -> tuple[Path, DataSource]:
    """Return the dataset directory and its source, generating the phantom if needed."""
    if data_dir_arg:
        print(f"Using the RSNA 2024 data in {data_dir_arg} (data source: real)")
        return Path(data_dir_arg), "real"
    banner(
        "NO --data-dir GIVEN: USING THE BUILT-IN SYNTHETIC PHANTOM (ALL CONDITIONS), NOT REAL "
        "MRI.\nNumbers below describe the synthetic task and are NOT comparable to the paper's."
    )
    data_dir = out / "data"
    if (data_dir / META_JSON).exists():
        print(f"synthetic data already in {data_dir}")
        return data_dir, "synthetic"
    config = SyntheticConfig(
        n_studies=profile.n_studies,
        seed=seed,
        image_size_range=profile.image_size_range,
        slices_range=profile.slices_range,
        conditions="all",
    )
    summary = generate_dataset(data_dir, config, workers=workers, progress=True)
    print(summary.describe())
    return data_dir, "synthetic"


# ---------------------------------------------------------------------------------------------
# Predictions of a fine-tuning run, read back from its predictions_test.csv.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TestPredictions:
    """One run's test predictions, rows in the order of its CSV.

    Attributes:
        rows: Cache rows, (N,).
        study_ids: Study of each row, (N,).
        conditions: Condition name of each row, (N,).
        levels: Level name of each row, (N,).
        y_true: True grades, (N,).
        raw: Raw class probabilities (the model's softmax), (N, 3).
        calibrated: Calibrated class probabilities, (N, 3).
    """

    rows: np.ndarray
    study_ids: np.ndarray
    conditions: np.ndarray
    levels: np.ndarray
    y_true: np.ndarray
    raw: np.ndarray
    calibrated: np.ndarray

    @classmethod
    def read(cls, path: Path) -> TestPredictions:
        """Read a condition fine-tuning stage's ``predictions_test.csv``."""
        with path.open(newline="") as handle:
            records = list(csv.DictReader(handle))
        return cls(
            rows=np.array([int(r["row"]) for r in records], dtype=np.int64),
            study_ids=np.array([int(r["study_id"]) for r in records], dtype=np.int64),
            conditions=np.array([r["condition"] for r in records]),
            levels=np.array([r["level"] for r in records]),
            y_true=np.array([int(r["label"]) for r in records], dtype=np.int64),
            raw=np.array([[float(r[f"p{c}"]) for c in range(3)] for r in records]),
            calibrated=np.array([[float(r[f"q{c}"]) for c in range(3)] for r in records]),
        )

    def select(self, mask: np.ndarray) -> TestPredictions:
        """The rows where ``mask`` holds."""
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self)}
        )

    def key_order(self) -> np.ndarray:
        """Row order sorting by cache row (to pair two runs over the same discs)."""
        return np.argsort(self.rows, kind="stable")


def _intervals(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_resamples: int, seed: int
) -> dict[str, list[float]]:
    intervals = bootstrap_ci(y_true, y_pred, groups=groups, n_resamples=n_resamples, seed=seed)
    return {c: [v.point, v.low, v.high] for c, v in intervals.items()}


def per_condition_table1(
    predictions: TestPredictions, *, calibrated: bool, n_resamples: int, seed: int
) -> dict[str, dict[str, list[float]]]:
    """Table 1 columns with study-bootstrap CIs for each condition (argmax of raw or calibrated)."""
    probabilities = predictions.calibrated if calibrated else predictions.raw
    y_pred = probabilities.argmax(axis=1)
    result: dict[str, dict[str, list[float]]] = {}
    for condition in CONDITIONS:
        mask = predictions.conditions == condition
        if not mask.any():
            continue
        result[condition] = _intervals(
            predictions.y_true[mask],
            y_pred[mask],
            predictions.study_ids[mask],
            n_resamples,
            seed,
        )
    return result


def full_rsna(predictions: TestPredictions, *, calibrated: bool) -> dict[str, float]:
    """The RSNA 2024 score (all groups and any_severe_spinal) of one run's test rows."""
    score = rsna_score(
        predictions.y_true,
        predictions.calibrated if calibrated else predictions.raw,
        predictions.study_ids,
        predictions.conditions,
    )
    return {k: float(v) for k, v in score._asdict().items()}


def paired_difference(
    a: TestPredictions, b: TestPredictions, *, n_resamples: int, seed: int
) -> dict[str, list[float]]:
    """Balanced accuracy of ``b`` minus ``a`` per condition, with a paired study bootstrap.

    Both runs score the same test discs (same cache, split and seed); the rows are paired by
    cache row and the same resampled studies serve both (one seed).
    """
    a = a.select(a.key_order())
    b = b.select(b.key_order())
    if not np.array_equal(a.rows, b.rows):
        raise ValueError("the two runs did not score the same test discs")
    result: dict[str, list[float]] = {}
    for condition in CONDITIONS:
        mask = a.conditions == condition
        if not mask.any():
            continue
        dists = []
        points = []
        for run in (a, b):
            y_pred = run.raw[mask].argmax(axis=1)
            dists.append(
                bootstrap_distribution(
                    run.y_true[mask],
                    y_pred,
                    groups=run.study_ids[mask],
                    n_resamples=n_resamples,
                    seed=seed,
                )["Bal Acc"]
            )
            points.append(balanced_accuracy(run.y_true[mask], y_pred))
        low, high = np.nanpercentile(dists[1] - dists[0], [2.5, 97.5])
        result[condition] = [float(points[1] - points[0]), float(low), float(high)]
    return result


# ---------------------------------------------------------------------------------------------
# The synthetic truth: per-condition Bayes ceilings and the true posterior on the test discs.
# ---------------------------------------------------------------------------------------------


def _latent_r(data_dir: Path) -> dict[tuple[int, str, str], float]:
    """(study, condition, level) -> latent stenosis r, for every condition of the phantom."""
    r_of: dict[tuple[int, str, str], float] = {}
    with (data_dir / "synthetic_truth.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            r_of[(int(row["study_id"]), CONDITIONS[0], row["level"])] = float(row["r"])
    with (data_dir / TRUTH_CONDITIONS_CSV).open(newline="") as handle:
        for row in csv.DictReader(handle):
            r_of[(int(row["study_id"]), row["condition"], row["level"])] = float(row["r"])
    return r_of


def synthetic_truth_on_test(
    data_dir: Path, predictions: TestPredictions, *, n_resamples: int, seed: int
) -> dict[str, Any]:
    """The ceilings per condition and the true posterior's RSNA score, on the same test rows."""
    meta = json.loads((data_dir / META_JSON).read_text())
    config = SyntheticConfig.from_dict(meta["parameters"])
    ceilings = condition_ceilings(config)
    r_of = _latent_r(data_dir)
    r = np.array(
        [
            r_of[(int(s), str(c), str(level))]
            for s, c, level in zip(
                predictions.study_ids, predictions.conditions, predictions.levels, strict=True
            )
        ]
    )
    table1: dict[str, dict[str, list[float]]] = {}
    posterior = np.zeros((len(r), 3))
    for condition in CONDITIONS:
        mask = predictions.conditions == condition
        if not mask.any():
            continue
        table1[condition] = _intervals(
            predictions.y_true[mask],
            ceilings[condition].predict(r[mask]),
            predictions.study_ids[mask],
            n_resamples,
            seed,
        )
        labels = condition_label_config(config, condition)
        posterior[mask] = grade_probabilities(
            r[mask], labels.grade_thresholds, labels.reader_noise_sd
        )
    score = rsna_score(predictions.y_true, posterior, predictions.study_ids, predictions.conditions)
    return {
        "table1": table1,
        "true_posterior_rsna": {k: float(v) for k, v in score._asdict().items()},
        "true_posterior_rsna_population": meta["conditions"]["true_posterior_rsna_score"],
        "ceiling_population": {
            c: float(meta["conditions"]["ceilings"][c]["balanced_accuracy"])
            for c in meta["conditions"]["ceilings"]
        },
    }


# ---------------------------------------------------------------------------------------------
# Figures: one Figure-1-style picture per sequence.
# ---------------------------------------------------------------------------------------------


def sequence_figure(
    data_dir: Path,
    cache: PreparedCache,
    condition: str,
    path: Path,
    provenance: Provenance,
) -> Path:
    """One study's slice with its ``condition`` points and the five cached ROIs.

    The study is the first whose five rows of ``condition`` are all graded with at least two
    different grades (so the crops show a difference), falling back to the first complete one.
    """
    table = cache.table
    ids = table.condition_id
    wanted = CONDITIONS.index(condition)
    chosen: np.ndarray | None = None
    for study in np.unique(table.study_id):
        rows = np.flatnonzero((table.study_id == study) & (ids == wanted))
        if len(rows) != len(LEVELS):
            continue
        if chosen is None:
            chosen = rows
        labels = np.asarray(table.label)[rows]
        if (labels >= 0).all() and len(np.unique(labels)) >= 2:
            chosen = rows
            break
    if chosen is None:
        raise ValueError(f"no study has all five levels of {condition!r}")
    rows = chosen[np.argsort(np.asarray(table.level_id)[chosen])]
    first = int(rows[0])
    series_dir = (
        data_dir / IMAGES_DIR / str(int(table.study_id[first])) / str(int(table.series_id[first]))
    )
    image = read_series(series_dir).slice_for(int(table.instance_number[first]))
    same_slice = np.asarray(table.instance_number)[rows] == table.instance_number[first]
    grades = ("N/M", "Mod", "Sev")

    def title(i: int | np.integer) -> str:
        label = int(table.label[i])
        return f"{LEVELS[int(table.level_id[i])]} {grades[label] if label >= 0 else '?'}"

    return plot_rois(
        image,
        [(title(i), float(table.x[i]), float(table.y[i])) for i in rows[same_slice]],
        [np.asarray(cache.rois[i]) for i in rows],
        path,
        provenance,
        slice_title=f"(a) {CONDITION_SEQUENCE[condition]}, instance "
        f"{int(table.instance_number[first])}: {condition}",
        crop_titles=[title(i) for i in rows],
    )


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100.0 * value:+.0f}%"


def main(
    *,
    out: Path,
    profile_name: str,
    seed: int,
    device: str,
    workers: int | None,
    data_dir: str | None,
) -> int:
    """Run the all-condition reproduction and write ``report_conditions.md`` / ``.json``."""
    profile = CONDITION_PROFILES[profile_name]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(stage: str, began: float) -> None:
        timings[stage] = round(time.perf_counter() - began, 1)
        print(f"[{stage}] {timings[stage]:.1f} s", flush=True)

    t = time.perf_counter()
    data, source = ensure_data(data_dir, profile, out, seed, workers or 2)
    timed("data", t)

    banner("prepare: one ROI per (condition, side, level) on its own series and instance")
    t = time.perf_counter()
    result = prepare_cache(
        data, out / "cache", PrepareConfig(conditions="all"), workers=workers or 2
    )
    print(format_summary(result))
    timed("prepare", t)
    cache = PreparedCache.open(out / "cache")
    provenance = Provenance(
        data_source=source,
        profile=f"{profile.name} (all conditions)",
        seed=seed,
        data_dir=str(data),
        device=str(select_device(device)),
    )
    shared: dict[str, Any] = {
        "cache_dir": str(out / "cache"),
        "seed": seed,
        "data_source": source,
        "profile": profile.name,
        "runtime": RuntimeConfig(device=device, progress="lines", num_workers=workers),
    }

    def pretrain(name: str, sequences: tuple[str, ...]) -> Path:
        stage_dir = out / name
        return run_pretraining(
            PretrainConfig(
                **shared,
                out_dir=str(stage_dir),
                resume=resumable(stage_dir),
                epochs=profile.pretrain_epochs,
                batch_size=profile.pretrain_batch,
                input_size=profile.input_size,
                sequences=sequences,
            )
        ).model_path

    banner(
        f"contrastive pretraining over every condition's ROIs: one shared encoder, then one per "
        f"sequence ({profile.pretrain_epochs} epochs each, V={paper.N_VIEWS}, "
        f"tau={paper.TEMPERATURE:g})"
    )
    t = time.perf_counter()
    shared_encoder = pretrain("pretrain_shared", ())
    timed("pretrain_shared", t)
    t = time.perf_counter()
    per_sequence = {
        sequence: pretrain(f"pretrain_{SEQUENCE_SLUGS[sequence]}", (sequence,))
        for sequence in SERIES_DESCRIPTIONS
    }
    timed("pretrain_per_sequence", t)

    predictions: dict[str, TestPredictions] = {}
    calibrations: dict[str, str] = {}  # run -> its calibration method(s) and scope
    for key, title, encoders, head in RUNS:
        banner(f"condition fine-tuning: {title} ({profile.finetune_epochs} epochs)")
        t = time.perf_counter()
        stage_dir = out / key
        stage = run_condition_finetuning(
            ConditionFinetuneConfig(
                **shared,
                out_dir=str(stage_dir),
                resume=resumable(stage_dir),
                mode="finetune",
                encoder=str(shared_encoder) if encoders == "shared" else None,
                sequence_encoders=(
                    tuple(f"{s}={p}" for s, p in per_sequence.items())
                    if encoders == "per_sequence"
                    else ()
                ),
                head=head,
                epochs=profile.finetune_epochs,
                batch_size=profile.finetune_batch,
                input_size=profile.input_size,
                n_resamples=profile.n_resamples,
            )
        )
        predictions[key] = TestPredictions.read(stage.out_dir / "predictions_test.csv")
        metrics = json.loads((stage.out_dir / "metrics.json").read_text())
        stored = metrics.get("calibration") or {}
        methods = ", ".join(sorted({str(m["method"]) for m in stored.values()})) or "none"
        scope = metrics["provenance"].get("calibration_scope", "condition")
        calibrations[key] = f"{methods} ({scope})" if stored else methods
        timed(key, t)

    banner("report")
    n = profile.n_resamples
    tables = {
        key: {
            "raw": per_condition_table1(p, calibrated=False, n_resamples=n, seed=seed),
            "calibrated": per_condition_table1(p, calibrated=True, n_resamples=n, seed=seed),
            "rsna_raw": full_rsna(p, calibrated=False),
            "rsna_calibrated": full_rsna(p, calibrated=True),
        }
        for key, p in predictions.items()
    }
    main_run = predictions["shared_softmax"]
    truth = (
        synthetic_truth_on_test(data, main_run, n_resamples=n, seed=seed)
        if source == "synthetic"
        else None
    )
    encoder_diff = paired_difference(
        predictions["shared_softmax"], predictions["per_sequence_softmax"], n_resamples=n, seed=seed
    )
    ordinal_diff = paired_difference(
        predictions["shared_softmax"], predictions["shared_corn"], n_resamples=n, seed=seed
    )
    figures = {
        SEQUENCE_SLUGS[CONDITION_SEQUENCE[condition]]: sequence_figure(
            data,
            cache,
            condition,
            out / f"fig1_{SEQUENCE_SLUGS[CONDITION_SEQUENCE[condition]]}.png",
            provenance,
        )
        for condition in (CONDITIONS[0], CONDITIONS[1], CONDITIONS[3])
    }
    timings["total"] = round(time.perf_counter() - started, 1)
    markdown = report_markdown(
        provenance=provenance,
        profile=profile,
        tables=tables,
        truth=truth,
        encoder_diff=encoder_diff,
        ordinal_diff=ordinal_diff,
        calibrations=calibrations,
        n_test=len(main_run.rows),
        n_test_studies=len(np.unique(main_run.study_ids)),
        figures=figures,
        timings=timings,
    )
    (out / "report_conditions.md").write_text(markdown)
    report = {
        "provenance": provenance.to_dict(),
        "profile": dataclasses.asdict(profile),
        "runs": {key: title for key, title, _, _ in RUNS},
        "tables": tables,
        "calibration_methods": calibrations,
        "truth": truth,
        "per_sequence_minus_shared": encoder_diff,
        "corn_minus_softmax": ordinal_diff,
        "n_test_rows": len(main_run.rows),
        "figures": {name: p.name for name, p in figures.items()},
        "timings_s": timings,
    }
    (out / "report_conditions.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown)
    print(f"\nwrote {out / 'report_conditions.md'}, {out / 'report_conditions.json'}")
    return 0


def _diff_table(diff: Mapping[str, Sequence[float]]) -> str:
    return markdown_table(
        ["Condition", "difference in Bal Acc [95% paired CI]"],
        [[c, f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"] for c, v in diff.items()],
    )


def report_markdown(
    *,
    provenance: Provenance,
    profile: ConditionProfile,
    tables: Mapping[str, Mapping[str, Any]],
    truth: Mapping[str, Any] | None,
    encoder_diff: Mapping[str, Sequence[float]],
    ordinal_diff: Mapping[str, Sequence[float]],
    calibrations: Mapping[str, str],
    n_test: int,
    n_test_studies: int,
    figures: Mapping[str, Path],
    timings: Mapping[str, float],
) -> str:
    """The all-condition report as Markdown."""
    titles = {key: title for key, title, _, _ in RUNS}
    main_key = "shared_softmax"
    lines = [
        f"# lumbarssl {lumbarssl.__version__}: all five RSNA 2024 conditions (beyond the paper)",
        "",
        f"**{provenance.caption()}** · device: {provenance.device} · run time "
        f"{timings['total'] / 60:.1f} min",
        "",
        "> Synthetic phantom data: the numbers describe the synthetic task, not real MRI."
        if provenance.data_source == "synthetic"
        else "> Real RSNA 2024 data.",
        "",
        f"Test set: {n_test} targets of {n_test_studies} studies (disc-level split stratified by "
        "condition and grade, the paper's protocol applied to every condition); 95% CIs resample "
        "whole studies. Table 1 columns are the raw argmax (the paper's class-weighted rule).",
        "",
        f"## Table 1 per condition — {titles[main_key]}",
        "",
    ]
    body = []
    for condition, metrics in tables[main_key]["raw"].items():
        body.append(["ours", condition] + [format_cell(c, metrics[c]) for c in COLUMNS])
        if truth is not None and condition in truth["table1"]:
            ceiling = truth["table1"][condition]
            body.append(
                ["Bayes ceiling", condition] + [format_cell(c, ceiling[c]) for c in COLUMNS]
            )
    lines += [markdown_table(["Row", "Condition", *COLUMNS], body)]
    if truth is not None:
        ours = tables[main_key]["raw"]
        gaps = [
            f"{c}: {ours[c]['Bal Acc'][0] - truth['table1'][c]['Bal Acc'][0]:+.3f}" for c in ours
        ]
        lines += [
            "Fine-tuned balanced accuracy minus the ceiling on the same discs: "
            + "; ".join(gaps)
            + ".",
            "",
        ]
    lines += [
        "## Balanced accuracy of every run per condition (raw argmax)",
        "",
        markdown_table(
            ["Run", *tables[main_key]["raw"], "mean"],
            [
                [titles[key]]
                + [format_cell("Bal Acc", t["raw"][c]["Bal Acc"]) for c in t["raw"]]
                + [f"{np.mean([t['raw'][c]['Bal Acc'][0] for c in t['raw']]):.3f}"]
                for key, t in tables.items()
            ],
        ),
        "### One encoder or one per sequence (per-sequence minus shared)",
        "",
        _diff_table(encoder_diff),
        "### Ordinal (CORN) vs softmax head (CORN minus softmax)",
        "",
        _diff_table(ordinal_diff),
        "## Calibrated vs raw, and the full RSNA 2024 score (lower is better)",
        "",
        "Each run fitted its calibration on its validation split (stored in its model.pt; "
        "method and scope per run, shared: one map fitted on all conditions' ROIs: "
        + "; ".join(f"{titles[k]}: {m}" for k, m in calibrations.items())
        + "). Bal Acc is the mean over conditions of the argmax's balanced accuracy.",
        "",
    ]
    rows = []
    for key, t in tables.items():
        before = float(np.mean([t["raw"][c]["Bal Acc"][0] for c in t["raw"]]))
        after = float(np.mean([t["calibrated"][c]["Bal Acc"][0] for c in t["calibrated"]]))
        raw, cal = t["rsna_raw"], t["rsna_calibrated"]
        rows.append(
            [
                titles[key],
                f"{before:.3f}",
                f"{after:.3f}",
                f"{raw['score']:.3f}",
                f"{cal['score']:.3f}",
                _pct(cal["score"] / raw["score"] - 1.0),
            ]
            + [
                f"{raw[g]:.3f} / {cal[g]:.3f}"
                for g in ("spinal", "foraminal", "subarticular", "any_severe_spinal")
            ]
        )
    if truth is not None:
        post = truth["true_posterior_rsna"]
        rows.append(
            ["true posterior (synthetic truth)", "—", "—", f"{post['score']:.3f}", "—", "—"]
            + [
                f"{post[g]:.3f}"
                for g in ("spinal", "foraminal", "subarticular", "any_severe_spinal")
            ]
        )
    lines += [
        markdown_table(
            [
                "Run",
                "Bal Acc raw",
                "Bal Acc calibrated",
                "RSNA raw",
                "RSNA calibrated",
                "change",
                "spinal raw / cal",
                "foraminal raw / cal",
                "subarticular raw / cal",
                "any_severe raw / cal",
            ],
            rows,
        )
    ]
    if truth is not None:
        best = min(t["rsna_calibrated"]["score"] for t in tables.values())
        post = truth["true_posterior_rsna"]["score"]
        lines += [
            f"Best calibrated RSNA score {best:.3f} vs the true posterior's {post:.3f} on the "
            f"same targets ({_pct(best / post - 1.0)}); the true posterior over 20,000 simulated "
            f"studies scores {truth['true_posterior_rsna_population']['score']:.3f}.",
            "",
        ]
    lines += [
        "## Figures (one per sequence: a study's slice, its points and the cached ROIs)",
        "",
        *[f"![{name}]({p.name})" for name, p in figures.items()],
        "",
        "## Stage times (s)",
        "",
        markdown_table(list(timings), [[f"{v:.1f}" for v in timings.values()]]),
        f"Profile: {dataclasses.asdict(profile)}",
        "",
    ]
    return "\n".join(lines)
