"""``lumbarssl finetune-conditions`` and pretraining by sequence on a tiny all-condition cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _synth_configs import tiny_all_conditions

from lumbarssl.cli import main
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.datasets import DiscROIDataset
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.data.recipes import RoiRecipe
from lumbarssl.layout import CONDITION_SEQUENCE, CONDITIONS, SERIES_DESCRIPTIONS
from lumbarssl.metrics import Calibration, fit_calibration, rsna_score
from lumbarssl.metrics.calibration import NonPositiveTemperatureError
from lumbarssl.models import (
    ConditionClassifier,
    ContrastiveModel,
    DiscClassifier,
    load_checkpoint,
    resnet18_encoder,
    save_checkpoint,
)
from lumbarssl.pipeline import (
    CONDITION_CALIBRATION_KEY,
    ConditionFinetuneConfig,
    PretrainConfig,
    condition_calibrations_from_metadata,
    make_splits,
    predict_classifier,
    pretraining_rows,
    run_condition_finetuning,
)
from lumbarssl.synthetic import generate_dataset
from lumbarssl.training import RuntimeConfig

SYNTH = tiny_all_conditions(n_studies=8, seed=3)
RUNTIME = RuntimeConfig(device="cpu", num_workers=0, progress="off")
SPLIT: dict[str, Any] = {"split": "study", "val_size": 0.25, "test_size": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth_cond")
    generate_dataset(root, SYNTH, progress=False)
    return root


@pytest.fixture(scope="module")
def cache_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache_cond")
    prepare_cache(data, out, PrepareConfig(roi_size=32, localizer_size=32, conditions="all"))
    return out


def _config(cache_dir: Path, out: Path, **fields: Any) -> ConditionFinetuneConfig:
    settings: dict[str, Any] = {
        "mode": "scratch",
        "epochs": 2,
        "batch_size": 16,
        "input_size": 32,
        "n_resamples": 20,
        "runtime": RUNTIME,
        "data_source": "synthetic",
        **SPLIT,
    }
    return ConditionFinetuneConfig(
        cache_dir=str(cache_dir), out_dir=str(out), **(settings | fields)
    )


@pytest.fixture(scope="module")
def run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ConditionFinetuneConfig:
    config = _config(cache_dir, tmp_path_factory.mktemp("cond_run"))
    run_condition_finetuning(config)
    return config


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the grades present, straight from its definition."""
    return float(np.mean([np.mean(predicted[truth == g] == g) for g in np.unique(truth)]))


def test_stage_writes_its_outputs_and_the_test_rows_of_every_condition(
    run: ConditionFinetuneConfig, cache_dir: Path
) -> None:
    out = Path(run.out_dir)
    for name in ("model.pt", "best.pt", "last.pt", "predictions_test.csv", "metrics.json"):
        assert (out / name).is_file(), name
    rows = _rows(out / "predictions_test.csv")
    assert list(rows[0]) == [
        "row", "study_id", "condition", "level", "label", "p0", "p1", "p2", "q0", "q1", "q2",
    ]  # fmt: skip
    cache = PreparedCache.open(cache_dir)
    test = make_splits(cache, run).test
    assert sorted(int(r["row"]) for r in rows) == sorted(test.tolist())
    condition = cache.table.condition
    assert all(r["condition"] == condition[int(r["row"])] for r in rows)
    assert {r["condition"] for r in rows} == set(CONDITIONS)


def test_metrics_match_a_recomputation_from_the_csv(run: ConditionFinetuneConfig) -> None:
    out = Path(run.out_dir)
    rows = _rows(out / "predictions_test.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    truth = np.array([int(r["label"]) for r in rows])
    names = np.array([r["condition"] for r in rows])
    studies = np.array([int(r["study_id"]) for r in rows])
    for reading, prefix in (("raw", "p"), ("calibrated", "q")):
        probs = np.array([[float(r[f"{prefix}{c}"]) for c in range(3)] for r in rows])
        predicted = probs.argmax(axis=1)
        for name in CONDITIONS:
            keep = names == name
            table = metrics["conditions"][name][reading]["table1"]
            assert table["Bal Acc"][0] == pytest.approx(
                _balanced_accuracy(truth[keep], predicted[keep])
            )
            assert table["Bal Acc"][1] <= table["Bal Acc"][0] <= table["Bal Acc"][2]
        # The CSV rounds probabilities to 6 decimals.
        expected = rsna_score(truth, probs, studies, names)
        assert metrics["rsna"][reading]["score"] == pytest.approx(expected.score, abs=1e-4)
        assert metrics["rsna"][reading]["foraminal"] == pytest.approx(expected.foraminal, abs=1e-4)


def test_model_holds_one_calibration_per_condition(run: ConditionFinetuneConfig) -> None:
    model, metadata = load_checkpoint(Path(run.out_dir) / "model.pt")
    assert isinstance(model, ConditionClassifier)
    assert model.shared
    maps = condition_calibrations_from_metadata(metadata)
    assert set(maps) <= set(CONDITIONS)
    assert maps
    assert metadata[CONDITION_CALIBRATION_KEY] == {k: m.to_dict() for k, m in maps.items()}


def _validation_predictions(config: ConditionFinetuneConfig, cache_dir: Path) -> Any:
    """The saved model's validation predictions, recomputed outside the stage."""
    model, _ = load_checkpoint(Path(config.out_dir) / "model.pt")
    cache = PreparedCache.open(cache_dir)
    recipe = RoiRecipe.from_cache(cache, input_size=config.input_size)
    rows = make_splits(cache, config).val
    dataset = DiscROIDataset(cache, "supervised", recipe=recipe, indices=rows)
    return predict_classifier(model, dataset, device="cpu")


def _weighted_fit(logits: np.ndarray, labels: np.ndarray, method: str) -> Calibration:
    """The stage's fit, redone: bcts with RSNA weights, or bias where bcts has no 1/T > 0."""
    weights = np.array([1.0, 2.0, 4.0])[labels]
    if method == "bias":  # the documented fallback of a tiny model's signal-free logits
        with pytest.raises(NonPositiveTemperatureError):
            fit_calibration(logits, labels, "bcts", sample_weight=weights)
        return fit_calibration(logits, labels, "bias", sample_weight=weights)
    assert method == "bcts"
    return fit_calibration(logits, labels, "bcts", sample_weight=weights)


def test_shared_calibration_is_one_bcts_fit_on_every_conditions_validation_rois(
    run: ConditionFinetuneConfig, cache_dir: Path
) -> None:
    assert run.calibration_scope == "shared"
    _, metadata = load_checkpoint(Path(run.out_dir) / "model.pt")
    assert metadata["calibration_scope"] == "shared"
    maps = condition_calibrations_from_metadata(metadata)
    val = _validation_predictions(run, cache_dir)
    present = {CONDITIONS[int(k)] for k in np.unique(val.conditions)}
    assert set(maps) == present
    expected = _weighted_fit(val.logits, val.y_true, next(iter(maps.values())).method)
    for calibration in maps.values():
        assert calibration == next(iter(maps.values()))
        assert calibration.num_samples == len(val.y_true)
        np.testing.assert_allclose(calibration.scale, expected.scale, rtol=1e-6)
        np.testing.assert_allclose(calibration.bias, expected.bias, atol=1e-6)


def test_condition_scope_fits_each_condition_on_its_own_rois(
    cache_dir: Path, tmp_path: Path
) -> None:
    config = _config(cache_dir, tmp_path / "per_condition", calibration_scope="condition")
    run_condition_finetuning(config)
    _, metadata = load_checkpoint(Path(config.out_dir) / "model.pt")
    assert metadata["calibration_scope"] == "condition"
    maps = condition_calibrations_from_metadata(metadata)
    assert maps
    val = _validation_predictions(config, cache_dir)
    assert val.conditions is not None
    for name, calibration in maps.items():
        keep = val.conditions == CONDITIONS.index(name)
        assert calibration.num_samples == int(keep.sum()) < len(val.y_true)
        expected = _weighted_fit(val.logits[keep], val.y_true[keep], calibration.method)
        np.testing.assert_allclose(calibration.scale, expected.scale, rtol=1e-6)
        np.testing.assert_allclose(calibration.bias, expected.bias, atol=1e-6)


def test_unknown_calibration_scope_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration_scope must be shared or condition"):
        _config(cache_dir, tmp_path, calibration_scope="group")


def test_pretrain_sequences_keep_exactly_the_rows_of_those_sequences(cache_dir: Path) -> None:
    cache = PreparedCache.open(cache_dir)
    common: dict[str, Any] = {"cache_dir": str(cache_dir), "out_dir": "unused", **SPLIT}
    all_train, all_val = pretraining_rows(cache, PretrainConfig(**common))
    condition = np.asarray(cache.table.condition)
    for chosen in (("Sagittal T1",), ("Axial T2", "Sagittal T2/STIR")):
        train, val = pretraining_rows(cache, PretrainConfig(sequences=chosen, **common))
        for subset, whole in ((train, all_train), (val, all_val)):
            wanted = [r for r in whole if CONDITION_SEQUENCE[str(condition[r])] in chosen]
            assert subset.tolist() == wanted
            assert len(wanted) > 0
    assert "sequences" not in PretrainConfig(**common).to_dict()
    with pytest.raises(ValueError, match="sequences must be names"):
        PretrainConfig(sequences=("Coronal",), **common)


def test_config_checks_the_encoders() -> None:
    base: dict[str, Any] = {"cache_dir": "c", "out_dir": "o", "mode": "finetune"}
    with pytest.raises(ValueError, match="pass encoder="):
        ConditionFinetuneConfig(**base)
    with pytest.raises(ValueError, match="missing"):
        ConditionFinetuneConfig(sequence_encoders=("Sagittal T1=a.pt",), **base)
    with pytest.raises(ValueError, match="SEQUENCE=PATH"):
        ConditionFinetuneConfig(sequence_encoders=("Coronal=a.pt",), **base)
    entries = tuple(f"{s}=p{i}.pt" for i, s in enumerate(SERIES_DESCRIPTIONS))
    config = ConditionFinetuneConfig(sequence_encoders=entries, **base)
    assert config.layout == "per_sequence"
    assert config.sequence_encoder_paths()["Axial T2"] == "p2.pt"


def test_cli_runs_per_sequence_encoders(cache_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    entries = []
    for i, name in enumerate(SERIES_DESCRIPTIONS):
        path = tmp_path / f"pre{i}.pt"
        save_checkpoint(path, ContrastiveModel())
        entries.append(f"{name}={path}")
    out = tmp_path / "cli"
    argv = ["finetune-conditions", "--cache-dir", str(cache_dir), "--out-dir", str(out)]
    argv += ["--mode", "linear-probe", "--epochs", "1", "--batch-size", "16"]
    argv += ["--input-size", "32", "--n-resamples", "5", "--split", "study"]
    argv += ["--val-size", "0.25", "--test-size", "0.25", "--device", "cpu"]
    argv += ["--num-workers", "0", "--progress", "off", "--head", "corn"]
    assert main([*argv, "--sequence-encoders", *entries]) == 0
    saved = ConditionFinetuneConfig.load(out / "stage_config.json")
    assert saved.sequence_encoders == tuple(entries)
    assert saved.head == "corn"
    model, metadata = load_checkpoint(out / "model.pt")
    assert isinstance(model, ConditionClassifier)
    assert model.sequences == SERIES_DESCRIPTIONS
    assert model.mode == "linear_probe"
    assert metadata["encoder_layout"] == "per_sequence"
    assert json.loads((out / "metrics.json").read_text())["rsna"]["raw"]["score"] > 0


@pytest.fixture(scope="module")
def spinal_cache(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same studies prepared the paper's way: spinal canal ROIs only."""
    out = tmp_path_factory.mktemp("spinal_cache")
    prepare_cache(data, out, PrepareConfig(roi_size=32, localizer_size=32))
    return out


def test_stage_refuses_a_spinal_only_cache(tmp_path: Path, spinal_cache: Path) -> None:
    argv = ["finetune-conditions", "--cache-dir", str(spinal_cache), "--out-dir"]
    argv += [str(tmp_path / "o")]
    assert main([*argv, "--mode", "scratch", "--device", "cpu"]) == 2


def _evaluate_argv(run: ConditionFinetuneConfig, cache_dir: Path, out: Path) -> list[str]:
    argv = ["evaluate", "--cache-dir", str(cache_dir), "--out-dir", str(out)]
    argv += ["--checkpoint", str(Path(run.out_dir) / "model.pt"), "--n-resamples", "20"]
    argv += ["--split", "study", "--val-size", "0.25", "--test-size", "0.25", "--seed", "0"]
    return [*argv, "--device", "cpu", "--num-workers", "0", "--progress", "off"]


def test_evaluate_scores_a_condition_classifier_as_the_stage_did(
    run: ConditionFinetuneConfig,
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "eval"
    assert main(_evaluate_argv(run, cache_dir, out)) == 0
    printed = capsys.readouterr().out
    # The stage's report (checked against the CSV above) and evaluate's, on the same rows.
    stage = json.loads((Path(run.out_dir) / "metrics.json").read_text())
    report = json.loads((out / "report_test.json").read_text())
    for name in CONDITIONS:
        for reading in ("raw", "calibrated"):
            ours, theirs = report["conditions"][name][reading], stage["conditions"][name][reading]
            for column, cell in theirs["table1"].items():  # NaN where a grade is absent
                np.testing.assert_allclose(ours["table1"][column], cell, rtol=1e-9)
            assert ours["confusion"] == theirs["confusion"]
        assert name in printed
    for reading in ("raw", "calibrated"):
        assert report["rsna"][reading] == pytest.approx(stage["rsna"][reading])
        assert f"RSNA 2024 score, {reading}: {stage['rsna'][reading]['score']:.4f}" in printed
    assert report["calibration"] == stage["calibration"]
    assert report["provenance"]["calibration_scope"] == "shared"
    assert _rows(out / "predictions_test.csv") == _rows(Path(run.out_dir) / "predictions_test.csv")


def test_evaluate_refuses_a_condition_classifier_on_a_spinal_only_cache(
    run: ConditionFinetuneConfig,
    spinal_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(_evaluate_argv(run, spinal_cache, tmp_path / "eval")) == 2
    err = capsys.readouterr().err
    assert "holds spinal canal ROIs only" in err
    assert "Traceback" not in err


def test_spinal_grading_refuses_an_all_condition_cache(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A spinal grader would train and be scored on every condition's ROIs, on other splits.
    argv = ["finetune", "--cache-dir", str(cache_dir), "--out-dir", str(tmp_path / "ft")]
    assert main([*argv, "--mode", "scratch", "--device", "cpu", "--progress", "off"]) == 2
    err = capsys.readouterr().err
    assert "was prepared with --conditions all" in err
    assert "finetune-conditions" in err
    assert "Traceback" not in err
    assert not (tmp_path / "ft" / "model.pt").exists()

    torch.manual_seed(0)
    spinal_model = tmp_path / "spinal.pt"
    save_checkpoint(spinal_model, DiscClassifier(resnet18_encoder(in_chans=1)))
    argv = ["evaluate", "--cache-dir", str(cache_dir), "--out-dir", str(tmp_path / "eval")]
    assert main([*argv, "--checkpoint", str(spinal_model), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "was prepared with --conditions all" in err
    assert "Traceback" not in err
    assert not (tmp_path / "eval" / "report_test.json").exists()
