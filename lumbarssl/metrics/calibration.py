r"""Post-hoc calibration of grade logits: temperature, bias and vector scaling.

The paper trains with class weights :math:`\alpha = (0.8, 4, 5)` (Sec. 4.4, Eq. 2). A model
that minimises an :math:`\alpha`-weighted likelihood estimates :math:`q_c \propto \alpha_c
p_c` instead of the true :math:`p_c`: its logits carry a prior shift of :math:`\log\alpha_c`.
Guo et al. (2017, *On calibration of modern neural networks*) fit a small map
:math:`z \mapsto z'` on held-out logits by minimising the negative log-likelihood (NLL):

================  ========================================  ==========================
method            map (per class :math:`c`)                 undoes a prior shift?
================  ========================================  ==========================
``temperature``   :math:`z'_c = z_c / T`                    no: one scale, argmax kept
``bias``          :math:`z'_c = z_c + b_c`                  yes: :math:`b_c = -\log\alpha_c`
``bcts``          :math:`z'_c = z_c / T + b_c`              yes, and tempers confidence
``vector``        :math:`z'_c = w_c z_c + b_c`              yes (and rescales too)
================  ========================================  ==========================

``bcts`` is bias-corrected temperature scaling (Alexandari, Kundaje and Shrikumar, 2020,
*Maximum likelihood with bias-corrected calibration is hard-to-beat at label shift
adaptation*): one temperature for over- or under-confidence plus one bias per class for the
prior shift, :math:`C` parameters against vector scaling's :math:`2C - 1`, so it needs fewer
Moderate and Severe validation discs to fit stably.

A single temperature multiplies every logit by the same factor, so it cannot add the
class-dependent offset :math:`-\log\alpha_c`; bias and vector scaling can, and may change the
predicted grade (report balanced accuracy before and after). Softmax is unchanged by adding
one constant to every logit, so fitted biases are centred to mean zero.

The fit minimises the (optionally sample-weighted) mean NLL with L-BFGS and a strong-Wolfe line
search, in float64 on the CPU, from a fixed start, so it is deterministic. The NLL is convex
in the parameters of all three maps (temperature is fitted as the inverse temperature
:math:`1/T`). The result is a :class:`Calibration`, a frozen config that round-trips to a dict,
so it can travel in a checkpoint's metadata. Ordinal models are calibrated through their log
class probabilities (:func:`lumbarssl.losses.ordinal_log_probabilities`), which are valid
logits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Final, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lumbarssl._core.config import ConfigBase
from lumbarssl.errors import ConfigError, DataError

if TYPE_CHECKING:  # only in annotations, so the API docs show `npt.ArrayLike` unexpanded
    import numpy.typing as npt

__all__ = [
    "CALIBRATION_METHODS",
    "Calibration",
    "CalibrationMethod",
    "NonPositiveTemperatureError",
    "fit_calibration",
]

#: Calibration maps :func:`fit_calibration` fits; ``"identity"`` leaves logits unchanged.
CALIBRATION_METHODS: Final[tuple[str, ...]] = ("identity", "temperature", "bias", "bcts", "vector")
CalibrationMethod = Literal["identity", "temperature", "bias", "bcts", "vector"]
#: Methods with one shared positive scale :math:`1/T`.
_ONE_SCALE: Final[tuple[str, ...]] = ("temperature", "bcts")
#: Methods with fitted per-class biases (they need every class in the fitting labels).
_BIASED: Final[tuple[str, ...]] = ("bias", "bcts", "vector")


class NonPositiveTemperatureError(DataError):
    """A temperature fit whose best inverse temperature ``1/T`` is not positive.

    The logits carry no signal about the labels (or are anti-correlated with them); a caller
    may fall back to a map without a temperature (bias scaling).
    """


@dataclasses.dataclass(frozen=True, kw_only=True)
class Calibration(ConfigBase):
    r"""A fitted calibration map :math:`z'_c = s_c z_c + b_c`, applied to logits.

    Attributes:
        method: ``"identity"``, ``"temperature"``, ``"bias"``, ``"bcts"`` or ``"vector"``.
        scale: :math:`s_c`, one per class (all :math:`1/T` for ``"temperature"`` and
            ``"bcts"``, all 1 for ``"bias"`` and ``"identity"``).
        bias: :math:`b_c`, one per class, mean zero (all 0 for ``"temperature"`` and
            ``"identity"``).
        nll_before: Mean NLL of the fitting logits before calibration (``None`` if not fitted).
        nll_after: Mean NLL after calibration (``None`` if not fitted).
        num_samples: Number of samples the map was fitted on (0 if not fitted).

    Raises:
        ConfigError: For an unknown method, mismatched lengths, non-finite values, or values
            that the method does not allow.
    """

    method: str = "identity"
    scale: tuple[float, ...] = (1.0, 1.0, 1.0)
    bias: tuple[float, ...] = (0.0, 0.0, 0.0)
    nll_before: float | None = None
    nll_after: float | None = None
    num_samples: int = 0

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"calibration method must be one of {CALIBRATION_METHODS}, got {self.method!r}"
            )
        if len(self.scale) != len(self.bias) or len(self.scale) < 2:
            raise ConfigError(
                "calibration scale and bias need one value per class (at least 2), got "
                f"{len(self.scale)} and {len(self.bias)}"
            )
        values = (*self.scale, *self.bias)
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"calibration scale and bias must be finite, got {values}")
        if self.method in ("identity", "bias") and any(s != 1.0 for s in self.scale):
            raise ConfigError(f"{self.method} calibration has scale 1, got {self.scale}")
        if self.method in ("identity", "temperature") and any(b != 0.0 for b in self.bias):
            raise ConfigError(f"{self.method} calibration has bias 0, got {self.bias}")
        if self.method in _ONE_SCALE and (len(set(self.scale)) != 1 or self.scale[0] <= 0.0):
            raise ConfigError(
                f"{self.method} calibration needs one positive scale 1/T, got {self.scale}"
            )

    @classmethod
    def identity(cls, num_classes: int = 3) -> Calibration:
        """The map that leaves logits unchanged.

        Args:
            num_classes: Number of classes ``C``.

        Returns:
            An ``"identity"`` calibration.
        """
        return cls(method="identity", scale=(1.0,) * num_classes, bias=(0.0,) * num_classes)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` the map applies to."""
        return len(self.scale)

    @property
    def temperature(self) -> float:
        """The temperature :math:`T` of a ``"temperature"``, ``"bcts"`` or ``"identity"`` map.

        Raises:
            ConfigError: For bias or vector scaling, which have no single temperature.
        """
        if self.method not in (*_ONE_SCALE, "identity"):
            raise ConfigError(f"{self.method} calibration has no single temperature")
        return 1.0 / self.scale[0]

    def apply(self, logits: Tensor) -> Tensor:
        """Calibrate logits.

        Args:
            logits: Class logits (or log-probabilities) of shape ``(B, C)``.

        Returns:
            Calibrated logits of shape ``(B, C)``, in the dtype and on the device of ``logits``.

        Raises:
            ValueError: If ``logits`` is not ``(B, C)`` with this map's ``C``.
        """
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"expected logits of shape (B, {self.num_classes}), got {tuple(logits.shape)}"
            )
        scale = torch.tensor(self.scale, dtype=logits.dtype, device=logits.device)
        bias = torch.tensor(self.bias, dtype=logits.dtype, device=logits.device)
        return logits * scale + bias

    def probabilities(self, logits: Tensor) -> Tensor:
        """Calibrated class probabilities, ``softmax(apply(logits))``.

        Args:
            logits: Class logits of shape ``(B, C)``.

        Returns:
            Probabilities of shape ``(B, C)``; rows sum to one.
        """
        return F.softmax(self.apply(logits), dim=1)

    def argmax_change_rate(self, logits: Tensor) -> float:
        """Share of rows whose predicted class changes under this map.

        Always 0 for ``"temperature"`` and ``"identity"``.

        Args:
            logits: Class logits of shape ``(B, C)``, ``B >= 1``.

        Returns:
            The share in ``[0, 1]``.
        """
        if logits.shape[0] == 0:
            raise ValueError("no rows to compare: logits is empty")
        changed = self.apply(logits).argmax(dim=1) != logits.argmax(dim=1)
        return float(changed.double().mean().item())


def _weighted_nll(logits: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return (per_sample * weight).sum() / weight.sum()


def fit_calibration(
    logits: Tensor | npt.ArrayLike,
    labels: Tensor | npt.ArrayLike,
    method: CalibrationMethod = "bias",
    *,
    sample_weight: Tensor | npt.ArrayLike | None = None,
    max_iter: int = 500,
) -> Calibration:
    r"""Fit a calibration map on held-out logits by minimising the NLL (Guo et al., 2017).

    Args:
        logits: Validation logits (or log-probabilities) of shape ``(N, C)``.
        labels: True classes of shape ``(N,)``, in ``[0, C)``.
        method: ``"temperature"``, ``"bias"`` (default), ``"bcts"``, ``"vector"`` or
            ``"identity"``.
        sample_weight: Optional non-negative weight per sample, shape ``(N,)``; the fit then
            minimises the weighted mean NLL. With the RSNA weights 1/2/4 of the true grade
            (:data:`~lumbarssl.metrics.rsna.RSNA_SAMPLE_WEIGHTS`) it minimises the
            competition's per-condition log loss directly; ``None`` gives every sample weight 1
            (calibration in Guo et al.'s sense).
        max_iter: L-BFGS iterations at most.

    Returns:
        The fitted :class:`Calibration`, with the NLL before and after.

    Raises:
        DataError: On shape mismatches, non-finite logits, labels out of range, weights that
            are negative or sum to zero, a bias or vector fit on labels that miss a class (its
            bias would run to minus infinity), or a temperature fit that finds a non-positive
            inverse temperature (logits anti-correlated with the labels).
        ConfigError: For an unknown method or ``max_iter < 1``.

    Example:
        >>> logits = torch.randn(200, 3)
        >>> labels = torch.distributions.Categorical(logits=logits).sample()
        >>> calibration = fit_calibration(logits + torch.tensor([0.0, 1.6, 1.8]), labels)
        >>> calibrated = calibration.apply(logits)
    """
    if method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}"
        )
    if max_iter < 1:
        raise ConfigError(f"max_iter must be >= 1, got {max_iter}")
    z = torch.as_tensor(logits).detach().to(device="cpu", dtype=torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu")
    if z.dim() != 2 or z.shape[1] < 2 or z.shape[0] == 0:
        raise DataError(
            f"expected logits of shape (N, C) with N >= 1, C >= 2, got {tuple(z.shape)}"
        )
    n, c = z.shape
    if y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(
            f"expected integer labels of shape ({n},), got {tuple(y.shape)} of {y.dtype}"
        )
    y = y.long()
    if not bool(torch.isfinite(z).all()):
        raise DataError("calibration logits must be finite; found NaN or infinity")
    bad = y[(y < 0) | (y >= c)]
    if bad.numel():
        raise DataError(f"calibration labels must be in [0, {c}), got {sorted(set(bad.tolist()))}")
    if sample_weight is None:
        w = torch.ones(n, dtype=torch.float64)
    else:
        w = torch.as_tensor(sample_weight).detach().to(device="cpu", dtype=torch.float64)
        if w.shape != (n,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise DataError(
                f"sample_weight must be finite, non-negative, of shape ({n},); got shape "
                f"{tuple(w.shape)}"
            )
        if float(w.sum()) <= 0.0:
            raise DataError("sample_weight sums to zero: nothing to fit")
    if method in _BIASED:
        present = torch.bincount(y[w > 0], minlength=c)
        missing = torch.nonzero(present == 0).flatten().tolist()
        if missing:
            raise DataError(
                f"{method} calibration needs validation samples of every class; class(es) "
                f"{missing} have none. Use method='temperature' or a larger validation split"
            )

    nll_before = float(_weighted_nll(z, y, w))
    if method == "identity":
        return Calibration(
            method="identity",
            scale=(1.0,) * c,
            bias=(0.0,) * c,
            nll_before=nll_before,
            nll_after=nll_before,
            num_samples=n,
        )
    inverse_temperature = torch.ones(1, dtype=torch.float64, requires_grad=method in _ONE_SCALE)
    scale = torch.ones(c, dtype=torch.float64, requires_grad=method == "vector")
    bias = torch.zeros(c, dtype=torch.float64, requires_grad=method in _BIASED)
    params = [p for p in (inverse_temperature, scale, bias) if p.requires_grad]

    def transform() -> Tensor:
        return z * (inverse_temperature * scale) + bias

    optimiser = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = _weighted_nll(transform(), y, w)
        torch.autograd.backward(loss)
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        nll_after = float(_weighted_nll(transform(), y, w))
        fitted_scale = (inverse_temperature * scale).tolist()
        fitted_bias = (bias - bias.mean()).tolist() if method != "temperature" else [0.0] * c
    if not all(math.isfinite(v) for v in (*fitted_scale, *fitted_bias, nll_after)):
        raise DataError(f"{method} calibration diverged; check the validation logits")
    if method in _ONE_SCALE and fitted_scale[0] <= 0.0:
        raise NonPositiveTemperatureError(
            f"{method} calibration found 1/T = {fitted_scale[0]:.4g} <= 0: the logits are "
            "anti-correlated with the labels; check that labels and logits are aligned"
        )
    return Calibration(
        method=method,
        scale=tuple(fitted_scale),
        bias=tuple(fitted_bias),
        nll_before=nll_before,
        nll_after=nll_after,
        num_samples=n,
    )
