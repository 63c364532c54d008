"""The all-condition reproduction's report pieces (examples/reproduce_conditions.py).

The stages it runs are tested on their own (tests/test_condition_stage.py, the pretraining and
prepare tests); here: reading a stage's predictions, the paired comparison of two runs, the
per-condition tables against the metrics they wrap, the synthetic truth on the test rows
against the generator's own label model, and the ``--conditions`` switch.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lumbarssl.layout import CONDITIONS, LEVELS
from lumbarssl.metrics import bootstrap_ci, rsna_score
from lumbarssl.synthetic import SyntheticConfig, generate_dataset
from lumbarssl.synthetic.conditions import condition_label_config
from lumbarssl.synthetic.labels import grade_probabilities

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def rc(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _load("reproduce_conditions", monkeypatch)


def _write_predictions(path: Path, rng: np.random.Generator, n_studies: int = 12) -> None:
    """A stage-like predictions_test.csv: every condition and level of ``n_studies`` studies."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["row", "study_id", "condition", "level", "label"]
            + [f"p{c}" for c in range(3)]
            + [f"q{c}" for c in range(3)]
        )
        row = 0
        for study in range(n_studies):
            for condition in CONDITIONS:
                for level in LEVELS:
                    p = rng.dirichlet(np.ones(3))
                    q = rng.dirichlet(np.ones(3))
                    writer.writerow(
                        [row, 1000 + study, condition, level, int(rng.integers(0, 3))]
                        + [f"{v:.6f}" for v in p]
                        + [f"{v:.6f}" for v in q]
                    )
                    row += 1


def test_tables_wrap_the_library_metrics(rc: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "predictions_test.csv"
    _write_predictions(path, np.random.default_rng(0))
    pred = rc.TestPredictions.read(path)
    assert pred.raw.shape == (12 * 25, 3)
    assert set(pred.conditions) == set(CONDITIONS)
    table = rc.per_condition_table1(pred, calibrated=False, n_resamples=50, seed=3)
    mask = pred.conditions == CONDITIONS[2]
    direct = bootstrap_ci(
        pred.y_true[mask], pred.raw[mask].argmax(1), groups=pred.study_ids[mask], n_resamples=50,
        seed=3,
    )  # fmt: skip
    assert table[CONDITIONS[2]]["Bal Acc"] == pytest.approx(list(direct["Bal Acc"]))
    calibrated = rc.full_rsna(pred, calibrated=True)
    expected = rsna_score(pred.y_true, pred.calibrated, pred.study_ids, pred.conditions)
    assert calibrated["score"] == pytest.approx(expected.score)
    assert rc.full_rsna(pred, calibrated=False)["score"] != pytest.approx(expected.score)


def test_paired_difference_pairs_rows_and_is_zero_against_itself(
    rc: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "a.csv"
    _write_predictions(path, np.random.default_rng(1))
    a = rc.TestPredictions.read(path)
    shuffled = a.select(np.random.default_rng(2).permutation(len(a.rows)))
    same = rc.paired_difference(a, shuffled, n_resamples=100, seed=0)
    for value in same.values():
        assert value == pytest.approx([0.0, 0.0, 0.0])
    # A perfect run minus a run: the point is 1 - the run's balanced accuracy, in its interval.
    perfect = dataclasses.replace(a, raw=np.eye(3)[a.y_true])
    diff = rc.paired_difference(a, perfect, n_resamples=200, seed=0)
    table = rc.per_condition_table1(a, calibrated=False, n_resamples=10, seed=0)
    for condition, (point, low, high) in diff.items():
        assert point == pytest.approx(1.0 - table[condition]["Bal Acc"][0])
        assert low <= point <= high
    other = a.select(np.arange(len(a.rows) - 1))
    with pytest.raises(ValueError, match="same test discs"):
        rc.paired_difference(a, other, n_resamples=10, seed=0)


def test_synthetic_truth_uses_each_conditions_label_model(rc: ModuleType, tmp_path: Path) -> None:
    config = SyntheticConfig(
        n_studies=3, seed=5, conditions="all", image_size_range=(256, 256), slices_range=(9, 9)
    )
    data = tmp_path / "data"
    generate_dataset(data, config, workers=1)
    r_of = rc._latent_r(data)
    keys = sorted(k for k in r_of if k[1] in (CONDITIONS[0], CONDITIONS[4]))
    path = tmp_path / "predictions_test.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "study_id", "condition", "level", "label", "p0", "p1", "p2",
                         "q0", "q1", "q2"])  # fmt: skip
        for i, (study, condition, level) in enumerate(keys):
            writer.writerow([i, study, condition, level, i % 3] + ["0.333333"] * 6)
    pred = rc.TestPredictions.read(path)
    truth = rc.synthetic_truth_on_test(data, pred, n_resamples=20, seed=0)
    assert set(truth["table1"]) == {CONDITIONS[0], CONDITIONS[4]}
    # The true posterior of each row from its own condition's label model, scored directly.
    posterior = np.zeros((len(keys), 3))
    for condition in (CONDITIONS[0], CONDITIONS[4]):
        mask = pred.conditions == condition
        labels = condition_label_config(config, condition)
        r = np.array([r_of[k] for k, m in zip(keys, mask, strict=True) if m])
        posterior[mask] = grade_probabilities(r, labels.grade_thresholds, labels.reader_noise_sd)
    expected = rsna_score(pred.y_true, posterior, pred.study_ids, pred.conditions)
    assert truth["true_posterior_rsna"]["score"] == pytest.approx(expected.score)
    assert set(truth["ceiling_population"]) == set(CONDITIONS)


def test_reproduce_paper_dispatches_conditions_all(monkeypatch: pytest.MonkeyPatch) -> None:
    rp = _load("reproduce_paper", monkeypatch)
    assert rp.parse_args([]).conditions == "spinal"
    calls: list[dict[str, object]] = []

    def fake_main(**kwargs: object) -> int:
        calls.append(kwargs)
        return 0

    rc = _load("reproduce_conditions", monkeypatch)
    monkeypatch.setattr(rc, "main", fake_main)
    assert rp.main(["--conditions", "all", "--profile", "smoke", "--out", "x", "--seed", "4"]) == 0
    assert calls
    assert calls[0]["profile_name"] == "smoke"
    assert calls[0]["seed"] == 4
    with pytest.raises(SystemExit):
        rp.parse_args(["--conditions", "foraminal"])
