"""The label model and the Bayes ceiling, checked against Monte Carlo and brute force."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import integrate

from lumbarssl.data.constants import LEVELS, SEVERITIES
from lumbarssl.synthetic import SyntheticConfig, bayes_ceiling, sample_study_plan
from lumbarssl.synthetic.labels import (
    beta_cdf,
    beta_pdf,
    grade_from_r,
    grade_probabilities,
    latent_density,
    reader_grade,
    sample_latent_stenosis,
)

# RSNA 2024 spinal canal stenosis frequencies (paper Sec. 3.1 data; issue spec).
RSNA_FREQUENCIES = {"Normal/Mild": 0.878, "Moderate": 0.075, "Severe": 0.048}


def _balanced_accuracy(truth: NDArray[np.int64], pred: NDArray[np.int64]) -> float:
    return float(np.mean([np.mean(pred[truth == k] == k) for k in range(3)]))


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.05, 0.5), st.floats(0.05, 0.45))
def test_grade_is_monotone_in_r(a: float, b: float, low: float, gap: float) -> None:
    thresholds = (low, min(low + gap, 0.99))
    lo, hi = sorted((a, b))
    assert grade_from_r(lo, thresholds) <= grade_from_r(hi, thresholds)


def test_grade_thresholds_are_inclusive_from_above() -> None:
    grades = grade_from_r(np.array([0.0, 0.3999, 0.4, 0.6999, 0.7, 1.0]), (0.4, 0.7))
    assert grades.tolist() == [0, 0, 1, 1, 2, 2]


def test_grade_probabilities_match_simulated_readers() -> None:
    rng = np.random.default_rng(0)
    r = np.array([0.1, 0.38, 0.42, 0.55, 0.69, 0.72, 0.95])
    draws = np.stack([reader_grade(r, (0.4, 0.7), 0.09, rng) for _ in range(20_000)])
    simulated = np.stack([(draws == k).mean(axis=0) for k in range(3)], axis=1)
    np.testing.assert_allclose(grade_probabilities(r, (0.4, 0.7), 0.09), simulated, atol=0.015)


def test_zero_reader_noise_gives_the_true_grade() -> None:
    r = np.linspace(0.0, 1.0, 101)
    probs = grade_probabilities(r, (0.4, 0.7), 0.0)
    assert np.array_equal(probs.argmax(axis=1), grade_from_r(r, (0.4, 0.7)))
    np.testing.assert_array_equal(probs.sum(axis=1), 1.0)


def test_latent_density_is_the_sampled_law() -> None:
    healthy, stenotic, p = (2.0, 12.0), (2.7, 1.6), 0.2
    total, _ = integrate.quad(
        lambda x: float(latent_density(np.array([x]), p, healthy, stenotic)[0]), 0, 1
    )
    assert total == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(1)
    samples = np.concatenate(
        [sample_latent_stenosis((p,) * 5, healthy, stenotic, rng) for _ in range(20_000)]
    )
    counts, edges = np.histogram(samples, bins=20, range=(0.0, 1.0))
    expected = [
        integrate.quad(
            lambda x: float(latent_density(np.array([x]), p, healthy, stenotic)[0]), lo, hi
        )[0]
        for lo, hi in itertools.pairwise(edges)
    ]
    np.testing.assert_allclose(counts / samples.size, expected, atol=0.006)


def test_default_ceiling_is_in_the_calibrated_range_with_moderate_hardest() -> None:
    ceiling = bayes_ceiling(SyntheticConfig())
    assert 0.85 <= ceiling.balanced_accuracy <= 0.90
    assert ceiling.recalls[1] == min(ceiling.recalls)
    assert sum(ceiling.class_priors) == pytest.approx(1.0)
    for grade, prior in zip(SEVERITIES, ceiling.class_priors, strict=True):
        assert prior == pytest.approx(RSNA_FREQUENCIES[grade], abs=0.005)
    # The posterior argmax maximises accuracy, the prior-weighted rule balanced accuracy.
    assert ceiling.argmax_accuracy >= ceiling.accuracy
    assert ceiling.balanced_accuracy >= ceiling.argmax_balanced_accuracy
    assert 0.0 <= ceiling.severe_to_normal_rate < 0.01


def test_ceiling_agrees_with_monte_carlo_of_the_label_model() -> None:
    config = SyntheticConfig()
    ceiling = bayes_ceiling(config)
    rng = np.random.default_rng(2)
    r = np.concatenate(
        [
            sample_latent_stenosis(
                config.stenosis_prevalence, config.healthy_r_beta, config.stenotic_r_beta, rng
            )
            for _ in range(60_000)
        ]
    )
    labels = reader_grade(r, config.grade_thresholds, config.reader_noise_sd, rng)
    pred = ceiling.predict(r)
    assert _balanced_accuracy(labels, pred) == pytest.approx(ceiling.balanced_accuracy, abs=0.01)
    frequencies = np.bincount(labels, minlength=3) / labels.size
    np.testing.assert_allclose(frequencies, ceiling.class_priors, atol=0.003)
    severe = labels == 2
    assert np.mean(pred[severe] == 0) == pytest.approx(ceiling.severe_to_normal_rate, abs=0.002)


def test_no_two_cut_rule_on_r_beats_the_ceiling() -> None:
    """Brute force over monotone rules 'grade = number of cuts below r' on a Monte Carlo sample."""
    config = SyntheticConfig()
    ceiling = bayes_ceiling(config)
    rng = np.random.default_rng(3)
    r = np.concatenate(
        [
            sample_latent_stenosis(
                config.stenosis_prevalence, config.healthy_r_beta, config.stenotic_r_beta, rng
            )
            for _ in range(40_000)
        ]
    )
    labels = reader_grade(r, config.grade_thresholds, config.reader_noise_sd, rng)
    best = 0.0
    cuts = np.linspace(0.1, 0.9, 41)
    for i, c1 in enumerate(cuts):
        for c2 in cuts[i + 1 :]:
            best = max(best, _balanced_accuracy(labels, grade_from_r(r, (c1, c2))))
    # Sampling error of a balanced accuracy on 200 000 discs is about 0.003.
    assert best <= ceiling.balanced_accuracy + 0.01
    assert best >= ceiling.balanced_accuracy - 0.02


@given(st.floats(0.0, 0.3), st.floats(0.2, 0.5), st.floats(0.1, 0.35))
def test_ceiling_properties_hold_for_any_label_model(noise: float, low: float, gap: float) -> None:
    config = SyntheticConfig(reader_noise_sd=noise, grade_thresholds=(low, low + gap))
    ceiling = bayes_ceiling(config)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in (*ceiling.recalls, *ceiling.argmax_recalls))
    assert ceiling.balanced_accuracy >= ceiling.argmax_balanced_accuracy - 1e-9
    assert ceiling.argmax_accuracy >= ceiling.accuracy - 1e-9
    if noise == 0.0:
        assert ceiling.balanced_accuracy == pytest.approx(1.0)


def test_more_reader_noise_lowers_the_ceiling() -> None:
    scores = [
        bayes_ceiling(SyntheticConfig(reader_noise_sd=sd)).balanced_accuracy
        for sd in (0.0, 0.05, 0.09, 0.15)
    ]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0)


def test_study_plans_reproduce_rsna_frequencies_over_1000_studies() -> None:
    """The generator's own code path (sample_study_plan), no rendering."""
    config = SyntheticConfig()
    plans = [sample_study_plan(config, i) for i in range(1000)]
    recorded = Counter(
        SEVERITIES[d.recorded_grade] for p in plans for d in p.discs if d.recorded_grade is not None
    )
    total = sum(recorded.values())
    for grade, target in RSNA_FREQUENCIES.items():
        # Binomial standard error on ~5000 discs is at most 0.5 %.
        assert recorded[grade] / total == pytest.approx(target, abs=0.015), recorded
    abnormal = {
        level: np.mean([p.discs[k].true_grade > 0 for p in plans]) for k, level in enumerate(LEVELS)
    }
    assert min(abnormal["L3/L4"], abnormal["L4/L5"]) > max(abnormal["L1/L2"], abnormal["L5/S1"])
    missing = sum(any(d.recorded_grade is None for d in p.discs) for p in plans)
    partial = sum(any(d.coordinate is None for d in p.discs) for p in plans)
    assert 10 <= missing <= 60  # p_missing_labels = 0.03
    assert 25 <= partial <= 80  # p_partial_coordinates = 0.05
    assert len({p.study_id for p in plans}) == len(plans)


def test_true_grade_is_the_threshold_of_r() -> None:
    config = SyntheticConfig()
    for i in range(50):
        for d in sample_study_plan(config, i).discs:
            assert d.true_grade == int(grade_from_r(d.r, config.grade_thresholds))


def test_a_study_does_not_depend_on_other_parameters_of_other_streams() -> None:
    base = SyntheticConfig()
    other = dataclasses.replace(base, p_sagittal_t1=0.9, image_size_range=(300, 300), n_studies=5)
    for i in range(20):
        a, b = sample_study_plan(base, i), sample_study_plan(other, i)
        assert [(d.r, d.recorded_grade) for d in a.discs] == [
            (d.r, d.recorded_grade) for d in b.discs
        ]
        assert a.study_id == b.study_id


@given(st.floats(0.2, 10.0), st.floats(0.2, 10.0))
def test_beta_helpers_match_scipy_stats(a: float, b: float) -> None:
    from scipy import stats

    r = np.linspace(0.001, 0.999, 57)
    np.testing.assert_allclose(beta_pdf(r, a, b), stats.beta.pdf(r, a, b), rtol=1e-9)
    np.testing.assert_allclose(beta_cdf(r, a, b), stats.beta.cdf(r, a, b), rtol=1e-9, atol=1e-12)
