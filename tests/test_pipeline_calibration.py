"""Ordinal heads and validation-fitted calibration through fine-tuning, evaluate and predict."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _rsna_factory import make_rsna_dir
from torch import nn

from lumbarssl.cli import main
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.data.recipes import LocalizerRecipe, recipe_to_metadata
from lumbarssl.losses import OrdinalLoss, WeightedFocalLoss, ordinal_probabilities
from lumbarssl.metrics import Calibration, fit_calibration, rsna_spinal_score
from lumbarssl.models import (
    DiscClassifier,
    Localizer2p5D,
    build_model,
    load_checkpoint,
    resnet18_encoder,
    save_checkpoint,
)
from lumbarssl.pipeline import (
    ClassifierPredictions,
    DiscGrader,
    EvaluateConfig,
    FinetuneConfig,
    make_splits,
    predict_classifier,
    run_evaluation,
    run_finetuning,
    summarize,
)
from lumbarssl.pipeline.evaluate import (
    CALIBRATION_KEY,
    calibration_from_metadata,
    class_logits,
    supervised_dataset,
)
from lumbarssl.reporting import COLUMNS, format_calibration_table
from lumbarssl.training import RuntimeConfig

ALPHA = (0.8, 4.0, 5.0)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


# --- the classifier with an ordinal head ---------------------------------------------------


@pytest.mark.parametrize("kind", ["corn", "cumulative"])
def test_ordinal_classifier_outputs_and_checkpoint_round_trip(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DiscClassifier(resnet18_encoder(in_chans=1), head_kind=kind, mode="scratch")  # type: ignore[arg-type]
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    raw = model(x)
    assert raw.shape == (4, 2)  # K - 1 ordinal logits
    probabilities = torch.softmax(class_logits(model, raw.double()), dim=1)
    assert torch.allclose(probabilities, ordinal_probabilities(raw.double(), kind))  # type: ignore[arg-type]
    assert torch.allclose(probabilities.sum(1), torch.ones(4, dtype=torch.float64))
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, DiscClassifier)
    assert loaded.head_kind == kind
    assert torch.equal(loaded.eval()(x), raw)


def test_a_config_without_head_kind_builds_the_papers_softmax_head() -> None:
    config = DiscClassifier(resnet18_encoder(in_chans=1), mode="scratch").to_config()
    assert config.pop("head_kind") == "softmax"
    model = build_model(config)  # a checkpoint written before the option
    assert isinstance(model, DiscClassifier)
    assert model.head_kind == "softmax"
    assert isinstance(model.head, nn.Linear)
    assert model.head.out_features == 3
    with pytest.raises(ValueError, match="head_kind must be one of"):
        DiscClassifier(resnet18_encoder(in_chans=1), head_kind="probit")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["corn", "cumulative"])
def test_ordinal_loss_equals_the_focal_loss_of_the_class_logits(kind: str) -> None:
    # Eq. 2 applied to the ordinal class distribution: two implementations, one number.
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(32, 2, generator=generator, dtype=torch.float64)
    if kind == "cumulative":
        raw = torch.sort(raw, dim=1, descending=True).values
    target = torch.randint(0, 3, (32,), generator=generator)
    model = DiscClassifier(nn.Identity(), feature_dim=8, head_kind=kind, mode="scratch")  # type: ignore[arg-type]
    ordinal = OrdinalLoss(kind=kind, alpha=ALPHA, gamma=2.0)(raw, target)  # type: ignore[arg-type]
    focal = WeightedFocalLoss(alpha=ALPHA, gamma=2.0)(class_logits(model, raw), target)
    assert torch.allclose(ordinal, focal, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["corn", "cumulative"])
def test_ordinal_classifier_learns_a_fixed_batch(kind: str) -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
    model = DiscClassifier(encoder, feature_dim=16, head_kind=kind, mode="scratch")  # type: ignore[arg-type]
    x = torch.randn(24, 1, 8, 8)
    y = torch.arange(24) % 3
    loss_fn = OrdinalLoss(kind=kind, alpha=ALPHA, gamma=2.0)  # type: ignore[arg-type]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses[:: len(losses) // 6]
    with torch.no_grad():
        probabilities = torch.softmax(class_logits(model, model(x)), dim=1)
    assert torch.allclose(probabilities.sum(1), torch.ones(24))
    assert (probabilities.argmax(1) == y).float().mean() > 0.9


# --- summarize applies a calibration --------------------------------------------------------


def test_summarize_reports_raw_and_calibrated_readings_by_hand() -> None:
    # True posteriors p; the class-weighted model reports z = log p + log alpha (the prior
    # shift of Eq. 2's weights). Bias scaling with b = -log alpha gives p back exactly.
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    y = np.array([0, 1, 2, 0])
    z = np.log(p) + np.log(ALPHA)
    b = -np.log(ALPHA) + np.log(ALPHA).mean()
    predictions = ClassifierPredictions(
        rows=np.arange(4),
        study_ids=np.array([1, 1, 2, 2]),
        levels=np.array([0, 1, 0, 1]),
        y_true=y,
        probabilities=_softmax(z),
        logits=z,
    )
    calibration = Calibration(method="bias", scale=(1.0, 1.0, 1.0), bias=tuple(b.tolist()))
    report = summarize(predictions, n_resamples=20, calibration=calibration)
    # Raw argmax: 1, 1, 2, 0 -> recalls N 1/2, M 1, S 1. Calibrated argmax: 0, 1, 2, 0.
    assert report["table1"]["Bal Acc"][0] == pytest.approx((0.5 + 1 + 1) / 3)
    assert report["calibrated"]["table1"]["Bal Acc"][0] == pytest.approx(1.0)
    assert report["calibrated"]["argmax_change_rate"] == pytest.approx(0.25)
    assert report["calibrated"]["confusion"] == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    studies = predictions.study_ids
    assert report["rsna"]["score"] == pytest.approx(
        rsna_spinal_score(y, _softmax(z), studies).score
    )
    assert report["calibrated"]["rsna"]["score"] == pytest.approx(
        rsna_spinal_score(y, p, studies).score
    )
    assert Calibration.from_dict(report["calibration"]) == calibration
    assert "calibrated" not in summarize(predictions, n_resamples=20)
    table = format_calibration_table({"finetune": report})
    assert "| Fine-tuned Disc-Aware ResNet | bias | 0.833" in table
    assert "| 25.0% |" in table


def test_a_malformed_stored_calibration_is_an_input_error() -> None:
    assert calibration_from_metadata({}) is None
    with pytest.raises(ValueError, match=r"m.pt: metadata\['calibration'\] is not a calibration"):
        calibration_from_metadata({CALIBRATION_KEY: {"method": "platt"}}, "m.pt")


# --- fine-tuning end to end on a tiny cache -------------------------------------------------


@pytest.fixture(scope="module")
def rsna_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 12 studies graded N, M, S, N, N by level: 60 discs, every grade in val and test.
    return make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=12).root


@pytest.fixture(scope="module")
def cache_dir(rsna_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    prepare_cache(rsna_dir, out, PrepareConfig(roi_size=32, localizer_size=64), progress=False)
    return out


def _finetune(cache_dir: Path, out: Path, **fields: Any) -> FinetuneConfig:
    settings: dict[str, Any] = {
        "mode": "scratch",
        "epochs": 3,
        "batch_size": 8,
        "input_size": 32,
        "n_resamples": 20,
        "val_size": 0.25,
        "test_size": 0.25,
        "runtime": RuntimeConfig(device="cpu", num_workers=0, progress="off"),
        "data_source": "synthetic",
    }
    return FinetuneConfig(cache_dir=str(cache_dir), out_dir=str(out), **(settings | fields))


@pytest.fixture(scope="module")
def corn_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FinetuneConfig:
    config = _finetune(cache_dir, tmp_path_factory.mktemp("corn"), head="corn")
    run_finetuning(config)
    return config


def test_finetuning_with_an_ordinal_head_trains_and_stores_its_calibration(
    corn_run: FinetuneConfig,
) -> None:
    out = Path(corn_run.out_dir)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)
    model, metadata = load_checkpoint(out / "model.pt")
    assert isinstance(model, DiscClassifier)
    assert model.head_kind == "corn"
    assert metadata["head"] == "corn"
    stored = calibration_from_metadata(metadata)
    assert stored is not None
    assert stored.to_dict() == metadata[CALIBRATION_KEY]
    assert stored == Calibration.load(out / "calibration.json")
    assert stored.method == "bcts"
    # Independently: refit on the exported model's validation logits.
    cache = PreparedCache.open(corn_run.cache_dir)
    val = predict_classifier(
        model,
        supervised_dataset(cache, make_splits(cache, corn_run).val, metadata),
        device="cpu",
    )
    assert val.logits is not None
    weights = np.array([1.0, 2.0, 4.0])[val.y_true]  # the RSNA weights, by true grade
    refit = fit_calibration(val.logits, val.y_true, "bcts", sample_weight=weights)
    assert np.allclose(refit.bias, stored.bias, atol=1e-6)
    assert np.allclose(refit.scale, stored.scale, atol=1e-6)
    assert stored.num_samples == len(val.y_true)
    # Class probabilities (B, 3) downstream: the test CSV's rows sum to one.
    with (out / "predictions_test.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert all(abs(sum(float(r[f"p{c}"]) for c in range(3)) - 1.0) < 1e-5 for r in rows)
    report = json.loads((out / "report_test.json").read_text())
    assert Calibration.from_dict(report["calibration"]) == stored
    assert set(report["calibrated"]) == {"table1", "confusion", "rsna", "argmax_change_rate"}


def test_evaluate_applies_the_checkpoints_calibration(
    corn_run: FinetuneConfig, tmp_path: Path
) -> None:
    model_path = Path(corn_run.out_dir) / "model.pt"
    evaluate = EvaluateConfig(
        cache_dir=corn_run.cache_dir,
        out_dir=str(tmp_path / "eval"),
        checkpoint=str(model_path),
        n_resamples=20,
        val_size=corn_run.val_size,
        test_size=corn_run.test_size,
        runtime=RuntimeConfig(device="cpu", num_workers=0, progress="off"),
    )
    summary = run_evaluation(evaluate)
    stored = calibration_from_metadata(load_checkpoint(model_path)[1])
    assert stored is not None
    # Independently of summarize: the raw CSV's log probabilities through the stored map.
    with (tmp_path / "eval" / "predictions_test.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    p = np.array([[float(r[f"p{c}"]) for c in range(3)] for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    studies = np.array([int(r["study_id"]) for r in rows])
    calibrated = _softmax(np.log(p) * np.array(stored.scale) + np.array(stored.bias))
    expected = rsna_spinal_score(y, calibrated, studies)
    # The CSV keeps 6 decimals; through a temperature their rounding moves the score ~2e-4.
    assert summary["calibrated"]["rsna"]["score"] == pytest.approx(expected.score, abs=1e-3)
    uncalibrated = rsna_spinal_score(y, p, studies).score
    assert abs(expected.score - uncalibrated) > 1e-2  # the check above can tell the two apart
    assert summary["rsna"]["score"] == pytest.approx(
        rsna_spinal_score(y, p, studies).score, abs=1e-4
    )
    with (tmp_path / "eval" / "predictions_test_calibrated.csv").open() as handle:
        written = np.array([[float(r[f"p{c}"]) for c in range(3)] for r in csv.DictReader(handle)])
    assert np.allclose(written, calibrated, atol=1e-3)  # 6-decimal rounding, tempered
    # The fine-tuning stage's own report read the same numbers.
    report = json.loads((Path(corn_run.out_dir) / "report_test.json").read_text())
    assert summary["calibrated"]["rsna"] == pytest.approx(report["calibrated"]["rsna"])
    assert summary["table1"] == report["table1"]


def test_predict_reports_calibrated_probabilities_and_the_raw_grade(
    corn_run: FinetuneConfig, rsna_dir: Path, tmp_path: Path
) -> None:
    cache = PreparedCache.open(corn_run.cache_dir)
    torch.manual_seed(0)
    localizer = save_checkpoint(
        tmp_path / "localizer.pt",
        Localizer2p5D(),
        recipe=recipe_to_metadata(LocalizerRecipe.from_cache(cache, input_size=64)),
    )
    grader = DiscGrader(localizer, Path(corn_run.out_dir) / "model.pt", device="cpu")
    assert grader.calibration is not None
    table = cache.table
    series_dir = rsna_dir / "train_images" / str(table.study_id[0]) / str(table.series_id[0])
    prediction, image = grader.predict_series(series_dir)
    rois = torch.stack(
        [grader.classifier_input(image, level.x, level.y) for level in prediction.levels]
    )
    with torch.no_grad():
        raw = grader.classifier(rois).double()
    z = torch.log(ordinal_probabilities(raw, "corn")).numpy()
    expected = _softmax(z * np.array(grader.calibration.scale) + np.array(grader.calibration.bias))
    got = np.array([list(level.probabilities.values()) for level in prediction.levels])
    assert np.allclose(got, expected, atol=1e-5)
    grades = [level.grade for level in prediction.levels]
    assert grades == [("Normal/Mild", "Moderate", "Severe")[i] for i in z.argmax(1)]
    assert prediction.provenance["classifier"]["calibration"] == "bcts"


def test_calibration_none_stores_no_map(cache_dir: Path, tmp_path: Path) -> None:
    config = _finetune(cache_dir, tmp_path / "none", epochs=1, calibration="none")
    run_finetuning(config)
    _, metadata = load_checkpoint(tmp_path / "none" / "model.pt")
    assert CALIBRATION_KEY not in metadata
    report = json.loads((tmp_path / "none" / "report_test.json").read_text())
    assert "calibrated" not in report
    assert "calibration" not in report


# --- the command line -----------------------------------------------------------------------


def test_finetune_flags_for_head_and_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    import lumbarssl.cli.finetune

    calls: list[Any] = []
    monkeypatch.setattr(lumbarssl.cli.finetune, "run_finetuning", lambda c: calls.append(c))
    argv = ["finetune", "--cache-dir", "c", "--out-dir", "o", "--mode", "scratch"]
    assert main([*argv, "--head", "cumulative", "--calibration", "vector",
                 "--calibration-weights", "uniform"]) == 0  # fmt: skip
    (config,) = calls
    assert (config.head, config.calibration, config.calibration_weights) == (
        "cumulative",
        "vector",
        "uniform",
    )
    assert main(argv) == 0
    assert (calls[1].head, calls[1].calibration, calls[1].calibration_weights) == (
        "softmax",
        "bcts",
        "rsna",
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--head", "probit"])
    assert exit_info.value.code == 2


def test_reproduce_paper_has_an_ordinal_flag_off_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "examples" / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_paper", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reproduce_paper", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    assert module.parse_args([]).ordinal is None
    assert module.parse_args(["--ordinal"]).ordinal == "corn"
    assert module.parse_args(["--ordinal", "cumulative"]).ordinal == "cumulative"
    with pytest.raises(SystemExit):
        module.parse_args(["--ordinal", "probit"])
    # The comparison table: both heads' Table 1 cells with intervals, RSNA raw and calibrated.
    cells = {c: [0.5, 0.4, 0.6] for c in COLUMNS}
    reports = {
        "finetune": {"table1": cells, "rsna": {"score": 0.3}},
        "finetune_corn": {
            "table1": cells,
            "rsna": {"score": 0.25},
            "calibrated": {"rsna": {"score": 0.2}},
        },
    }
    table = module.ordinal_comparison(reports, "finetune_corn")
    assert "| finetune | 0.500 [0.40, 0.60] |" in table
    assert table.splitlines()[-1].endswith("| 0.250 | 0.200 |")
    assert table.splitlines()[-2].endswith("| 0.300 | — |")


def test_bcts_falls_back_to_bias_on_logits_without_signal(tmp_path: Path) -> None:
    from lumbarssl.pipeline.evaluate import ClassifierPredictions
    from lumbarssl.pipeline.finetune import fit_val_calibration

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [60, 25, 15])
    logits = -3.0 * np.eye(3)[y] + 0.1 * rng.standard_normal((100, 3))  # anti-correlated
    predictions = ClassifierPredictions(
        rows=np.arange(100),
        study_ids=np.arange(100),
        levels=np.zeros(100, dtype=np.int64),
        y_true=y,
        probabilities=torch.softmax(torch.from_numpy(logits), 1).numpy(),
        logits=logits,
    )
    config = FinetuneConfig(cache_dir="c", out_dir=str(tmp_path), mode="scratch")
    assert config.calibration == "bcts"
    fitted = fit_val_calibration(predictions, config)
    assert fitted is not None
    assert fitted.method == "bias"  # the temperature part had no positive optimum
    weights = np.array([1.0, 2.0, 4.0])[y]
    expected = fit_calibration(logits, y, "bias", sample_weight=weights)
    assert np.allclose(fitted.bias, expected.bias)
