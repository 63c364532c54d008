"""The label model: latent stenosis ``r``, its grade, and the reader who records a noisy grade.

Each disc has a latent stenosis ``r`` in ``[0, 1]``, the fraction by which its CSF column is
narrowed at the disc level. It is drawn from a two-component Beta mixture whose stenotic weight
depends on the level. The *true* grade thresholds ``r``; the *recorded* grade (``train.csv``)
thresholds what a reader perceives, ``r + e`` with ``e ~ N(0, reader_noise_sd**2)``. Reader
errors therefore only happen near the thresholds, and Moderate, a band between two thresholds,
is the hardest class, as in the paper (Sec. 5.2).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import special

from lumbarssl.layout import SEVERITIES

__all__ = [
    "beta_cdf",
    "beta_pdf",
    "grade_from_r",
    "grade_probabilities",
    "latent_density",
    "reader_grade",
    "sample_latent_stenosis",
]

_NUM_GRADES = len(SEVERITIES)


def sample_latent_stenosis(
    prevalence: NDArray[np.float64] | tuple[float, ...],
    healthy_beta: tuple[float, float],
    stenotic_beta: tuple[float, float],
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """Draw one latent stenosis per level.

    Args:
        prevalence: Per level, the probability of the stenotic component.
        healthy_beta: Beta ``(a, b)`` of the healthy component.
        stenotic_beta: Beta ``(a, b)`` of the stenotic component.
        rng: Random generator.

    Returns:
        ``r`` per level, shape ``(len(prevalence),)``, in ``[0, 1]``.
    """
    p = np.asarray(prevalence, dtype=np.float64)
    stenotic = rng.random(p.shape) < p
    healthy_r = rng.beta(*healthy_beta, size=p.shape)
    stenotic_r = rng.beta(*stenotic_beta, size=p.shape)
    return np.where(stenotic, stenotic_r, healthy_r)


def latent_density(
    r: NDArray[np.float64],
    prevalence: float,
    healthy_beta: tuple[float, float],
    stenotic_beta: tuple[float, float],
) -> NDArray[np.float64]:
    """Probability density of ``r`` at one level, the law :func:`sample_latent_stenosis` draws.

    Args:
        r: Points in ``(0, 1)``, any shape.
        prevalence: The level's probability of the stenotic component.
        healthy_beta: Beta ``(a, b)`` of the healthy component.
        stenotic_beta: Beta ``(a, b)`` of the stenotic component.

    Returns:
        The density at ``r``, same shape.
    """
    healthy = beta_pdf(r, *healthy_beta)
    stenotic = beta_pdf(r, *stenotic_beta)
    return np.asarray((1.0 - prevalence) * healthy + prevalence * stenotic, dtype=np.float64)


def beta_pdf(r: NDArray[np.float64], a: float, b: float) -> NDArray[np.float64]:
    """Density of the Beta(a, b) law at ``r`` in ``[0, 1]`` (scipy.special only: fast import)."""
    r = np.asarray(r, dtype=np.float64)
    log_pdf = special.xlogy(a - 1.0, r) + special.xlog1py(b - 1.0, -r) - special.betaln(a, b)
    return np.asarray(np.exp(log_pdf), dtype=np.float64)


def beta_cdf(r: NDArray[np.float64], a: float, b: float) -> NDArray[np.float64]:
    """Distribution function of the Beta(a, b) law at ``r`` in ``[0, 1]``."""
    return np.asarray(special.betainc(a, b, np.asarray(r, dtype=np.float64)), dtype=np.float64)


def grade_from_r(
    r: NDArray[np.float64] | float, thresholds: tuple[float, float]
) -> NDArray[np.int64]:
    """True grade before reader noise: 0 below ``thresholds[0]``, 2 from ``thresholds[1]`` on.

    Args:
        r: Latent stenosis, any shape.
        thresholds: Increasing cut points ``(Normal/Mild | Moderate, Moderate | Severe)``.

    Returns:
        Grade indices into :data:`~lumbarssl.layout.SEVERITIES`, same shape as ``r``.
    """
    return np.searchsorted(np.asarray(thresholds), np.asarray(r), side="right").astype(np.int64)


def reader_grade(
    r: NDArray[np.float64],
    thresholds: tuple[float, float],
    noise_sd: float,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Grade a reader records: the true thresholds applied to ``r`` plus Gaussian noise.

    Args:
        r: Latent stenosis, any shape.
        thresholds: Increasing cut points.
        noise_sd: Standard deviation of the reader's perception error.
        rng: Random generator.

    Returns:
        Recorded grade indices, same shape as ``r``.
    """
    perceived = r + noise_sd * rng.standard_normal(np.shape(r))
    return grade_from_r(perceived, thresholds)


def grade_probabilities(
    r: NDArray[np.float64], thresholds: tuple[float, float], noise_sd: float
) -> NDArray[np.float64]:
    """``P(recorded grade = k | r)`` under the reader model of :func:`reader_grade`.

    Args:
        r: Latent stenosis, shape ``(N,)``.
        thresholds: Increasing cut points.
        noise_sd: Standard deviation of the reader's perception error; 0 gives the indicator of
            :func:`grade_from_r`.

    Returns:
        Probabilities of shape ``(N, 3)``; rows sum to 1.
    """
    r = np.asarray(r, dtype=np.float64)
    if noise_sd == 0.0:
        return np.eye(_NUM_GRADES)[grade_from_r(r, thresholds)]
    cuts = np.array([-np.inf, *thresholds, np.inf])
    # P(r + e < c) = Phi((c - r) / sd); ndtr is the standard normal CDF (exact at +-inf).
    with np.errstate(over="ignore"):
        below = special.ndtr((cuts[None, :] - r[:, None]) / noise_sd)
    return np.diff(below, axis=1)
