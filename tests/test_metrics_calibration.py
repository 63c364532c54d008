from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lumbarssl.errors import ConfigError, DataError
from lumbarssl.metrics import (
    Calibration,
    NonPositiveTemperatureError,
    balanced_accuracy,
    fit_calibration,
)
from lumbarssl.paper import FOCAL_ALPHA

LOG_ALPHA = torch.tensor(FOCAL_ALPHA, dtype=torch.float64).log()


def _calibrated_data(n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits with RSNA-like priors, and labels drawn from their softmax."""
    generator = torch.Generator().manual_seed(seed)
    prior = torch.tensor([0.75, 0.17, 0.08], dtype=torch.float64).log()
    logits = 1.5 * torch.randn(n, 3, dtype=torch.float64, generator=generator) + prior
    labels = torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


def _nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.cross_entropy(logits, labels))


def _centred(values: torch.Tensor) -> list[float]:
    return (values - values.mean()).tolist()


def test_bias_and_vector_scaling_undo_a_prior_shift() -> None:
    logits, labels = _calibrated_data()
    shifted = logits + LOG_ALPHA  # what an alpha-weighted likelihood learns
    true_nll = _nll(logits, labels)
    for method in ("bias", "bcts", "vector"):
        calibration = fit_calibration(shifted, labels, method)
        assert list(calibration.bias) == pytest.approx(_centred(-LOG_ALPHA), abs=0.12)
        assert list(calibration.scale) == pytest.approx([1.0, 1.0, 1.0], abs=0.08)
        assert calibration.nll_before is not None
        assert calibration.nll_after is not None
        assert calibration.nll_before == pytest.approx(_nll(shifted, labels))
        assert calibration.nll_after == pytest.approx(_nll(calibration.apply(shifted), labels))
        assert calibration.nll_after < calibration.nll_before - 0.05
        # In-sample fit: at least as good as the true logits, and not much better.
        assert true_nll - 0.005 < calibration.nll_after <= true_nll + 1e-9


def test_bcts_undoes_a_prior_shift_and_overconfidence_together() -> None:
    logits, labels = _calibrated_data(seed=1)
    distorted = 2.0 * (logits + LOG_ALPHA)  # shifted and twice too confident
    true_nll = _nll(logits, labels)
    bcts = fit_calibration(distorted, labels, "bcts")
    assert bcts.temperature == pytest.approx(2.0, rel=0.04)
    assert list(bcts.bias) == pytest.approx(_centred(-LOG_ALPHA), abs=0.12)
    assert bcts.nll_after is not None
    assert abs(bcts.nll_after - true_nll) < 0.005
    # Neither half alone gets there: a bias keeps the overconfidence, a temperature the shift.
    for method in ("bias", "temperature"):
        alone = fit_calibration(distorted, labels, method)
        assert alone.nll_after is not None
        assert alone.nll_after - true_nll > 0.01, method
    assert Calibration.from_dict(bcts.to_dict()) == bcts
    with pytest.raises(ConfigError, match="one positive scale"):
        Calibration(method="bcts", scale=(0.5, 1.0, 1.0), bias=(0.0, 0.0, 0.0))


def test_temperature_scaling_cannot_undo_a_prior_shift() -> None:
    logits, labels = _calibrated_data()
    shifted = logits + LOG_ALPHA
    temperature = fit_calibration(shifted, labels, "temperature")
    bias = fit_calibration(shifted, labels, "bias")
    # The optimiser found the best temperature: a grid search agrees.
    grid = np.linspace(0.3, 4.0, 371)
    grid_nll = [_nll(shifted / t, labels) for t in grid]
    assert temperature.temperature == pytest.approx(grid[int(np.argmin(grid_nll))], abs=0.02)
    assert temperature.nll_after is not None
    assert bias.nll_after is not None
    assert temperature.nll_after == pytest.approx(min(grid_nll), abs=1e-5)
    # No temperature comes close to the truth; one bias vector does.
    true_nll = _nll(logits, labels)
    assert temperature.nll_after - true_nll > 0.03
    assert abs(bias.nll_after - true_nll) < 0.005
    # A temperature never changes the predicted grade; the bias does, and recovers accuracy.
    assert temperature.argmax_change_rate(shifted) == 0.0
    changed = bias.argmax_change_rate(shifted)
    by_hand = (bias.apply(shifted).argmax(1) != shifted.argmax(1)).double().mean().item()
    assert changed == pytest.approx(by_hand)
    assert changed > 0.05

    def accuracy(x: torch.Tensor) -> float:
        return float((x.argmax(1) == labels).double().mean())

    assert accuracy(bias.apply(shifted)) > accuracy(shifted) + 0.02
    # Balanced accuracy before and after, as the issue asks to report: the shift favours the
    # rare grades, so undoing it trades balanced accuracy for accuracy and likelihood.
    before = balanced_accuracy(labels.numpy(), shifted.argmax(1).numpy())
    after = balanced_accuracy(labels.numpy(), bias.apply(shifted).argmax(1).numpy())
    assert before > after


@pytest.mark.parametrize("method", ["temperature", "bias", "vector"])
def test_identity_when_already_calibrated(method: str) -> None:
    logits, labels = _calibrated_data(seed=1)
    calibration = fit_calibration(logits, labels, method)  # type: ignore[arg-type]
    assert list(calibration.scale) == pytest.approx([1.0] * 3, abs=0.05)
    assert list(calibration.bias) == pytest.approx([0.0] * 3, abs=0.08)
    assert calibration.nll_before is not None
    assert calibration.nll_after is not None
    assert calibration.nll_before - calibration.nll_after < 1e-3


def test_sample_weights_shift_the_optimum_by_their_log() -> None:
    # Weighting samples by w[y] makes the optimum q_c proportional to w_c p_c.
    logits, labels = _calibrated_data(seed=2)
    weights = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    calibration = fit_calibration(logits, labels, "bias", sample_weight=weights[labels])
    assert list(calibration.bias) == pytest.approx(_centred(weights.log()), abs=0.12)


def test_fit_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    logits, labels = _calibrated_data(n=3000, seed=3)
    first = fit_calibration(logits + LOG_ALPHA, labels, "vector")
    second = fit_calibration(logits + LOG_ALPHA, labels, "vector")
    assert first == second
    assert Calibration.from_dict(first.to_dict()) == first
    assert Calibration.from_json(first.to_json()) == first
    first.save(tmp_path / "calibration.json")
    loaded = Calibration.load(tmp_path / "calibration.json")
    assert loaded == first
    x = torch.randn(5, 3)
    assert torch.equal(loaded.apply(x), first.apply(x))
    assert loaded.apply(x).dtype == torch.float32
    assert first.probabilities(x).sum(1).tolist() == pytest.approx([1.0] * 5)


def test_identity_and_config_validation() -> None:
    identity = Calibration.identity()
    x = torch.randn(4, 3)
    assert torch.equal(identity.apply(x), x)
    assert identity.temperature == 1.0
    fitted = fit_calibration(x, torch.tensor([0, 1, 2, 0]), "identity")
    assert fitted.nll_before == fitted.nll_after
    with pytest.raises(ConfigError, match="one positive scale 1/T"):
        Calibration(method="temperature", scale=(1.0, 2.0, 1.0), bias=(0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="bias calibration has scale 1"):
        Calibration(method="bias", scale=(2.0, 2.0, 2.0), bias=(0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="method must be one of"):
        Calibration(method="platt")
    with pytest.raises(ConfigError, match="unknown Calibration key 'temp'"):
        Calibration.from_dict({"temp": 1.0})
    with pytest.raises(ConfigError, match="no single temperature"):
        Calibration(method="vector").temperature  # noqa: B018
    with pytest.raises(ValueError, match=r"expected logits of shape \(B, 3\)"):
        identity.apply(torch.zeros(2, 4))


def test_fit_validation() -> None:
    logits = torch.randn(6, 3)
    with pytest.raises(DataError, match=r"class\(es\) \[2\] have none"):
        fit_calibration(logits, torch.tensor([0, 1, 0, 1, 0, 1]), "bias")
    # A temperature needs no sample of every class (4 of 6 right: a finite positive 1/T).
    two_classes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] * 3)
    fitted = fit_calibration(two_classes, torch.tensor([0, 1, 0, 1, 1, 0]), "temperature")
    assert 0 < fitted.temperature < math.inf
    with pytest.raises(DataError, match=r"labels must be in \[0, 3\)"):
        fit_calibration(logits, torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(DataError, match="finite"):
        fit_calibration(torch.full((6, 3), math.nan), torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(DataError, match=r"integer labels of shape \(6,\)"):
        fit_calibration(logits, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="sums to zero"):
        fit_calibration(logits, torch.tensor([0, 1, 2, 0, 1, 2]), sample_weight=torch.zeros(6))
    with pytest.raises(ConfigError, match="method must be one of"):
        fit_calibration(logits, torch.tensor([0, 1, 2, 0, 1, 2]), "matrix")  # type: ignore[arg-type]
    anti = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 10)
    with pytest.raises(DataError, match="anti-correlated"):
        fit_calibration(anti, torch.tensor([1, 0] * 10), "temperature")
    for method in ("temperature", "bcts"):  # its own type, so callers can fall back on it
        with pytest.raises(NonPositiveTemperatureError, match="anti-correlated"):
            fit_calibration(anti, torch.tensor([1, 0] * 10), method)
