"""The best balanced accuracy any classifier can reach on the synthetic data.

A recorded grade depends on the image only through the latent stenosis ``r``: the reader's error
is independent of the pixels. The classifier that knows ``r`` exactly therefore bounds every
image-based classifier, and its scores follow from the label model in closed form up to a
one-dimensional integral over ``r``, computed here on a fine grid with exact Beta cell masses.

Two decision rules are reported:

* **balanced-accuracy optimal** (the ceiling): predict ``argmax_k P(k | r) / pi_k`` where ``pi_k``
  is the frequency of grade ``k``. Balanced accuracy weighs each example of class ``k`` by
  ``1 / (3 pi_k)``, so this rule maximises it pointwise in ``r``. It is the ceiling for the paper's
  headline metric (Table 1: balanced accuracy), and its severe-to-normal rate is the one quoted.
* **posterior argmax** (accuracy optimal): predict ``argmax_k P(k | r)``. It maximises plain
  accuracy but gives up Moderate recall; it is reported for comparison only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lumbarssl.layout import SEVERITIES
from lumbarssl.synthetic.config import SyntheticConfig
from lumbarssl.synthetic.labels import beta_cdf, grade_probabilities

__all__ = ["BayesCeiling", "bayes_ceiling"]

# Cells of the r grid; the scores move by less than 1e-6 beyond this.
_GRID_CELLS = 200_000
_NORMAL, _SEVERE = SEVERITIES.index("Normal/Mild"), SEVERITIES.index("Severe")


@dataclass(frozen=True)
class BayesCeiling:
    """Scores of the Bayes-optimal classifiers that know the latent stenosis ``r``.

    Attributes:
        class_priors: Expected frequency of each recorded grade (Normal/Mild, Moderate, Severe).
        balanced_accuracy: Balanced accuracy of the balanced-accuracy-optimal rule: the ceiling.
        recalls: Per-grade recall of that rule.
        accuracy: Plain accuracy of that rule.
        severe_to_normal_rate: Fraction of Severe discs that rule calls Normal/Mild.
        argmax_balanced_accuracy: Balanced accuracy of the posterior-argmax rule.
        argmax_recalls: Per-grade recall of the posterior-argmax rule.
        argmax_accuracy: Plain accuracy of the posterior-argmax rule (the accuracy ceiling).
        argmax_severe_to_normal_rate: Severe-to-normal rate of the posterior-argmax rule.
        decision_cuts: Values of ``r`` where the ceiling rule's prediction changes.
        grade_thresholds: The label model's thresholds (from the config).
        reader_noise_sd: The label model's reader noise (from the config).
    """

    class_priors: tuple[float, float, float]
    balanced_accuracy: float
    recalls: tuple[float, float, float]
    accuracy: float
    severe_to_normal_rate: float
    argmax_balanced_accuracy: float
    argmax_recalls: tuple[float, float, float]
    argmax_accuracy: float
    argmax_severe_to_normal_rate: float
    decision_cuts: tuple[float, ...]
    grade_thresholds: tuple[float, float]
    reader_noise_sd: float

    def predict(self, r: NDArray[np.float64]) -> NDArray[np.int64]:
        """Apply the balanced-accuracy-optimal rule.

        Args:
            r: Latent stenosis (or an estimate of it), shape ``(N,)``.

        Returns:
            Grade indices of shape ``(N,)``.
        """
        posterior = grade_probabilities(
            np.asarray(r, dtype=np.float64), self.grade_thresholds, self.reader_noise_sd
        )
        rule: NDArray[np.int64] = np.argmax(posterior / np.asarray(self.class_priors), axis=1)
        return rule.astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """Return the scores as a JSON-compatible dictionary."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def bayes_ceiling(config: SyntheticConfig) -> BayesCeiling:
    """Compute the ceiling for a config's label model.

    Levels are pooled with equal weight (every study has the five levels; missing cells are drawn
    independently of the grade).

    Args:
        config: The generator's parameters; only the label model's fields matter.

    Returns:
        The scores of both Bayes rules.
    """
    edges = np.linspace(0.0, 1.0, _GRID_CELLS + 1)
    mid = 0.5 * (edges[1:] + edges[:-1])
    healthy = np.diff(beta_cdf(edges, *config.healthy_r_beta))
    stenotic = np.diff(beta_cdf(edges, *config.stenotic_r_beta))
    prevalence = float(np.mean(config.stenosis_prevalence))
    mass = (1.0 - prevalence) * healthy + prevalence * stenotic  # P(r in cell), levels pooled

    posterior = grade_probabilities(mid, config.grade_thresholds, config.reader_noise_sd)
    joint = mass[:, None] * posterior  # P(r in cell, grade = k)
    priors = joint.sum(axis=0)

    ba_rule = np.argmax(posterior / priors, axis=1)
    argmax_rule = np.argmax(posterior, axis=1)
    recalls, accuracy, s2n = _scores(joint, priors, ba_rule)
    a_recalls, a_accuracy, a_s2n = _scores(joint, priors, argmax_rule)
    cuts = mid[1:][np.diff(ba_rule) != 0]
    return BayesCeiling(
        class_priors=_triple(priors),
        balanced_accuracy=float(np.mean(recalls)),
        recalls=_triple(recalls),
        accuracy=accuracy,
        severe_to_normal_rate=s2n,
        argmax_balanced_accuracy=float(np.mean(a_recalls)),
        argmax_recalls=_triple(a_recalls),
        argmax_accuracy=a_accuracy,
        argmax_severe_to_normal_rate=a_s2n,
        decision_cuts=tuple(float(c) for c in cuts),
        grade_thresholds=config.grade_thresholds,
        reader_noise_sd=config.reader_noise_sd,
    )


def _scores(
    joint: NDArray[np.float64], priors: NDArray[np.float64], rule: NDArray[np.intp]
) -> tuple[NDArray[np.float64], float, float]:
    hits = np.zeros_like(joint)
    hits[np.arange(len(rule)), rule] = 1.0
    correct = (joint * hits).sum(axis=0)
    recalls = correct / priors
    severe_as_normal = joint[rule == _NORMAL, _SEVERE].sum() / priors[_SEVERE]
    return recalls, float(correct.sum()), float(severe_as_normal)


def _triple(values: NDArray[np.float64]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
