"""Parameters of the synthetic sagittal-T2 lumbar spine generator.

Every random choice the generator makes is drawn from a range or probability held here, so one
:class:`SyntheticConfig` plus its seed fixes a dataset byte for byte. The defaults follow the RSNA
2024 Lumbar Spine Degenerative Classification data the paper uses (Sec. 3.1): its image sizes,
spacings and slice counts, and its spinal canal stenosis class frequencies (Normal/Mild 87.8 %,
Moderate 7.5 %, Severe 4.8 %).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from lumbarssl._core.config import ConfigBase
from lumbarssl.layout import LEVELS

#: Version of the generator's output (the default of :attr:`SyntheticConfig.generator_version`).
#: It changes whenever the same config and seed would give different files, and is written to
#: ``synthetic_meta.json``. ``"2.0"`` added the drifting, curved mid-sagittal plane.
GENERATOR_VERSION = "2.0"
#: Every version the generator can still write, oldest first; an older one reproduces its
#: datasets byte for byte.
GENERATOR_VERSIONS: tuple[str, ...] = ("1.0", "2.0")
#: Fields that version ``"1.0"`` ignores (they are left out of its dataset key, so its UIDs stay).
V2_FIELDS: tuple[str, ...] = (
    "generator_version",
    "midline_drift_slices",
    "midline_tilt_mm",
    "p_lateral_curvature",
    "lateral_curvature_mm",
)
#: Values of :attr:`SyntheticConfig.conditions`.
CONDITION_SETS: tuple[str, ...] = ("spinal", "all")
#: Fields of the four conditions beside the spinal canal; with ``conditions="spinal"`` they are
#: left out of the dataset key and of ``synthetic_meta.json``, so those datasets stay as before.
MULTI_CONDITION_FIELDS: tuple[str, ...] = (
    "conditions",
    "foraminal_prevalence",
    "foraminal_stenotic_beta",
    "subarticular_prevalence",
    "subarticular_stenotic_beta",
)

# The five spinal levels must fit in the field of view (L1/L2 to L5/S1 spans about 170 mm).
_MIN_FIELD_OF_VIEW_MM = 200.0
# Below this size the canal is only a few pixels wide and the phantom loses its anatomy.
_MIN_IMAGE_SIZE = 48
# Stored pixel values are unsigned 16-bit.
_MAX_STORED_VALUE = 65535.0


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig(ConfigBase):
    """Everything that shapes a synthetic dataset; the seed fixes the rest.

    Ranges are ``(low, high)`` pairs, both ends included; values are drawn uniformly from them per
    study (or per series). Lengths are in millimetres.

    Args:
        n_studies: Number of studies (patients) to generate.
        seed: Root seed; study ``i`` draws from ``numpy.random.SeedSequence(seed, spawn_key=(i,
            ...))``, so a study does not depend on how many studies come before or on the workers.
        image_size_range: Rows (= columns) of a sagittal image; RSNA has 256 to 640.
        pixel_spacing_range: In-plane pixel spacing; RSNA has 0.3 to 1.2 mm.
        field_of_view_range: In-plane field of view; the pixel spacing is the field of view over
            the image size, clipped to ``pixel_spacing_range``.
        slices_range: Sagittal slices per series; RSNA has 9 to 20 (more in a few series).
        slice_spacing_range: Distance between slice centres; RSNA has 3 to 6 mm.
        slice_thickness_ratio_range: Slice thickness as a fraction of the slice spacing (a gap
            between slices when below 1).
        p_reversed_instances: Probability that a series numbers its instances against the spatial
            order (``InstanceNumber`` 1 is the last slice along the slice normal).
        p_rescale: Probability that a series stores its pixels with a RescaleSlope/Intercept other
            than 1/0.
        p_sagittal_t1: Probability that a study also has a ``Sagittal T1`` series.
        p_axial_t2: Probability that a study also has an ``Axial T2`` series.
        intensity_scale_range: Stored value of cerebrospinal fluid (the brightest tissue on T2)
            before bias field and noise; scanners differ by an order of magnitude.
        noise_sd_range: Standard deviation of the complex Gaussian noise (Rician magnitude) as a
            fraction of the CSF intensity.
        bias_field_strength: Standard deviation of the smooth log-gain field (receiver coil
            inhomogeneity).
        rotation_range_deg: Largest in-plane rotation of the patient, either way.
        lordosis_range_deg: Lumbar lordosis, the change of the spine's tangent angle from the top
            of L1 to the L5/S1 disc.
        patient_scale_range: Scale factor applied to every anatomical length.
        grade_thresholds: Cut points on the latent stenosis ``r`` between Normal/Mild and
            Moderate, and between Moderate and Severe (the grade before reader noise).
        reader_noise_sd: Standard deviation of the Gaussian error of the reader's perception of
            ``r``; the recorded grade thresholds ``r + noise``. It sets the accuracy ceiling.
        stenosis_prevalence: Per level (L1/L2 to L5/S1), the probability that a disc's ``r`` is
            drawn from the stenotic rather than the healthy distribution.
        healthy_r_beta: Beta distribution ``(a, b)`` of ``r`` for healthy discs.
        stenotic_r_beta: Beta distribution ``(a, b)`` of ``r`` for stenotic discs.
        p_missing_labels: Probability that a study has one or two empty spinal canal cells in
            ``train.csv`` (their coordinates stay: unlabeled discs).
        p_partial_coordinates: Probability that a study lacks coordinates for one to three levels
            (their grades stay in ``train.csv``).
        coordinate_jitter_mm: Standard deviation of the annotator's error placing a coordinate
            (per in-plane axis, the reader offset of the annotations).
        generator_version: Which generator writes the dataset, one of :data:`GENERATOR_VERSIONS`.
            ``"1.0"``: the mid-sagittal plane lies within 0.4 slice spacings of the centre slice,
            which carries every coordinate. ``"2.0"``: the plane drifts by up to
            ``midline_drift_slices``, tilts and (in some studies) bows laterally, so each level's
            coordinate sits on the instance nearest to its own canal midline, and the canal's
            CSF fades with the lateral offset (partial volume of the round thecal sac).
        midline_drift_slices: (v2) Largest shift, in slice spacings, of the midline from the
            centre slice (uniform, either way; capped so the midline stays inside the slab).
        midline_tilt_mm: (v2) Largest lateral difference, either way, between the midline at
            the middle level and at L1/L2 or L5/S1 (an oblique slab or rotated patient).
        p_lateral_curvature: (v2) Probability that a study has a lateral curvature (scoliosis).
        lateral_curvature_mm: (v2) Lateral bow of the midline at the apex of the curve
            relative to L1/L2 and L5/S1, either side.
        conditions: Which conditions are graded and rendered. ``"spinal"`` (default): spinal
            canal stenosis only, the other 20 cells of ``train.csv`` hold ``Normal/Mild``; the
            output is the same byte for byte as before this field existed. ``"all"``: also left
            and right neural foraminal narrowing (on parasagittal Sagittal T1 slices) and left
            and right subarticular stenosis (on Axial T2 slices at each disc level), each from
            its own latent severity; every study then has all three series (``p_sagittal_t1``
            and ``p_axial_t2`` are not used), the sagittal slab is widened to reach both
            foramina and the axial series is sampled every 4 mm or less.
        foraminal_prevalence: (``conditions="all"``) Per level, the probability that a
            foramen's latent narrowing is drawn from the stenotic component.
        foraminal_stenotic_beta: (``conditions="all"``) Beta ``(a, b)`` of a stenotic
            foramen's narrowing (the healthy one follows ``healthy_r_beta``).
        subarticular_prevalence: (``conditions="all"``) Per level, the stenotic probability of
            a lateral recess.
        subarticular_stenotic_beta: (``conditions="all"``) Beta ``(a, b)`` of a stenotic
            recess's narrowing.

    Keyword-only; positional arguments (in the order above) still work with a
    :class:`DeprecationWarning`.

    Raises:
        ValueError: If a value is outside its allowed range; the message names the field.
    """

    _positional_fields: ClassVar[tuple[str, ...]] = (
        "n_studies",
        "seed",
        "image_size_range",
        "pixel_spacing_range",
        "field_of_view_range",
        "slices_range",
        "slice_spacing_range",
        "slice_thickness_ratio_range",
        "p_reversed_instances",
        "p_rescale",
        "p_sagittal_t1",
        "p_axial_t2",
        "intensity_scale_range",
        "noise_sd_range",
        "bias_field_strength",
        "rotation_range_deg",
        "lordosis_range_deg",
        "patient_scale_range",
        "grade_thresholds",
        "reader_noise_sd",
        "stenosis_prevalence",
        "healthy_r_beta",
        "stenotic_r_beta",
        "p_missing_labels",
        "p_partial_coordinates",
        "coordinate_jitter_mm",
    )

    n_studies: int = 100
    seed: int = 0
    image_size_range: tuple[int, int] = (256, 640)
    pixel_spacing_range: tuple[float, float] = (0.3, 1.2)
    field_of_view_range: tuple[float, float] = (220.0, 340.0)
    slices_range: tuple[int, int] = (9, 20)
    slice_spacing_range: tuple[float, float] = (3.0, 6.0)
    slice_thickness_ratio_range: tuple[float, float] = (0.8, 1.0)
    p_reversed_instances: float = 0.3
    p_rescale: float = 0.25
    p_sagittal_t1: float = 0.3
    p_axial_t2: float = 0.3
    intensity_scale_range: tuple[float, float] = (400.0, 3000.0)
    noise_sd_range: tuple[float, float] = (0.015, 0.045)
    bias_field_strength: float = 0.2
    rotation_range_deg: float = 8.0
    lordosis_range_deg: tuple[float, float] = (20.0, 45.0)
    patient_scale_range: tuple[float, float] = (0.9, 1.1)
    # Our convention: Moderate from 40 %, Severe from 70 % narrowing of the CSF column.
    grade_thresholds: tuple[float, float] = (0.4, 0.7)
    # Calibrated so that the Bayes ceiling's balanced accuracy is about 0.875 (see ceiling.py).
    reader_noise_sd: float = 0.09
    # With the two Beta laws below these give RSNA's spinal canal frequencies after reader noise
    # (87.8 / 7.5 / 4.8 %), with most stenosis at L3/L4 and L4/L5.
    stenosis_prevalence: tuple[float, float, float, float, float] = (0.05, 0.09, 0.16, 0.20, 0.08)
    healthy_r_beta: tuple[float, float] = (2.0, 12.0)
    stenotic_r_beta: tuple[float, float] = (2.7, 1.6)
    p_missing_labels: float = 0.03
    p_partial_coordinates: float = 0.05
    coordinate_jitter_mm: float = 1.0
    generator_version: str = GENERATOR_VERSION
    midline_drift_slices: float = 2.5
    midline_tilt_mm: float = 3.0
    p_lateral_curvature: float = 0.3
    lateral_curvature_mm: tuple[float, float] = (3.0, 9.0)
    conditions: str = "spinal"
    # Fitted (with healthy_r_beta, grade_thresholds and reader_noise_sd shared with the canal)
    # to the RSNA 2024 train.csv frequencies per level: see docs/synthetic.rst.
    foraminal_prevalence: tuple[float, float, float, float, float] = (0.01, 0.07, 0.24, 0.43, 0.41)
    foraminal_stenotic_beta: tuple[float, float] = (10.5, 8.5)
    subarticular_prevalence: tuple[float, float, float, float, float] = (
        0.05,
        0.21,
        0.42,
        0.72,
        0.35,
    )
    subarticular_stenotic_beta: tuple[float, float] = (3.25, 2.7)

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and comparable with tuples.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        _check_int("n_studies", self.n_studies, low=1)
        _check_int("seed", self.seed, low=0)
        _check_range("image_size_range", self.image_size_range, low=_MIN_IMAGE_SIZE, integer=True)
        _check_range("pixel_spacing_range", self.pixel_spacing_range, low=0.0, open_low=True)
        _check_range("field_of_view_range", self.field_of_view_range, low=_MIN_FIELD_OF_VIEW_MM)
        _check_range("slices_range", self.slices_range, low=1, integer=True)
        _check_range("slice_spacing_range", self.slice_spacing_range, low=0.0, open_low=True)
        _check_range(
            "slice_thickness_ratio_range",
            self.slice_thickness_ratio_range,
            low=0.0,
            high=1.0,
            open_low=True,
        )
        for name in ("p_reversed_instances", "p_rescale", "p_sagittal_t1", "p_axial_t2"):
            _check_probability(name, getattr(self, name))
        for name in ("p_missing_labels", "p_partial_coordinates"):
            _check_probability(name, getattr(self, name))
        _check_range(
            "intensity_scale_range",
            self.intensity_scale_range,
            low=1.0,
            high=_MAX_STORED_VALUE / 4,
        )
        _check_range("noise_sd_range", self.noise_sd_range, low=0.0, high=0.5)
        _check_scalar("bias_field_strength", self.bias_field_strength, low=0.0, high=1.0)
        _check_scalar("rotation_range_deg", self.rotation_range_deg, low=0.0, high=30.0)
        _check_range("lordosis_range_deg", self.lordosis_range_deg, low=0.0, high=80.0)
        _check_range("patient_scale_range", self.patient_scale_range, low=0.7, high=1.3)
        _check_range(
            "grade_thresholds", self.grade_thresholds, low=0.0, high=1.0, open_low=True, strict=True
        )
        if self.grade_thresholds[1] >= 1.0:
            raise ValueError(f"grade_thresholds must lie in (0, 1), got {self.grade_thresholds}")
        _check_scalar("reader_noise_sd", self.reader_noise_sd, low=0.0, high=1.0)
        for name in ("stenosis_prevalence", "foraminal_prevalence", "subarticular_prevalence"):
            values = getattr(self, name)
            if len(values) != len(LEVELS):
                raise ValueError(f"{name} needs one probability per level {LEVELS}, got {values}")
            for p in values:
                _check_probability(name, p)
        if self.conditions not in CONDITION_SETS:
            raise ValueError(f"conditions must be one of {CONDITION_SETS}, got {self.conditions!r}")
        for name in (
            "healthy_r_beta",
            "stenotic_r_beta",
            "foraminal_stenotic_beta",
            "subarticular_stenotic_beta",
        ):
            a_b = getattr(self, name)
            if len(a_b) != 2 or not all(_is_number(v) and v > 0 for v in a_b):
                raise ValueError(f"{name} must be two positive numbers (a, b), got {a_b}")
        _check_scalar("coordinate_jitter_mm", self.coordinate_jitter_mm, low=0.0, high=5.0)
        if self.generator_version not in GENERATOR_VERSIONS:
            raise ValueError(
                f"generator_version must be one of {GENERATOR_VERSIONS}, "
                f"got {self.generator_version!r}"
            )
        _check_scalar("midline_drift_slices", self.midline_drift_slices, low=0.0, high=10.0)
        _check_scalar("midline_tilt_mm", self.midline_tilt_mm, low=0.0, high=30.0)
        _check_probability("p_lateral_curvature", self.p_lateral_curvature)
        _check_range("lateral_curvature_mm", self.lateral_curvature_mm, low=0.0, high=40.0)
        # Every image size must admit a pixel spacing that keeps the field of view in range.
        size_lo, size_hi = self.image_size_range
        fov_lo, fov_hi = self.field_of_view_range
        hint = (
            f"; for these image sizes use e.g. pixel_spacing_range=({fov_lo / size_hi:.2f}, "
            f"{fov_hi / size_lo:.2f})"
        )
        if fov_lo / size_lo > self.pixel_spacing_range[1]:
            raise ValueError(
                f"image_size_range {self.image_size_range} and pixel_spacing_range "
                f"{self.pixel_spacing_range} cannot reach field_of_view_range "
                f"{self.field_of_view_range}: {size_lo} px x {self.pixel_spacing_range[1]} mm < "
                f"{fov_lo} mm{hint}"
            )
        if fov_hi / size_hi < self.pixel_spacing_range[0]:
            raise ValueError(
                f"image_size_range {self.image_size_range} and pixel_spacing_range "
                f"{self.pixel_spacing_range} exceed field_of_view_range "
                f"{self.field_of_view_range}: {size_hi} px x {self.pixel_spacing_range[0]} mm > "
                f"{fov_hi} mm{hint}"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_scalar(name: str, value: Any, *, low: float, high: float) -> None:
    if not _is_number(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def _check_probability(name: str, value: Any) -> None:
    _check_scalar(name, value, low=0.0, high=1.0)


def _check_range(
    name: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    integer: bool = False,
    open_low: bool = False,
    strict: bool = False,
) -> None:
    kind = "integers" if integer else "numbers"
    bracket = "(" if open_low else "["
    allowed = f"two {kind} low <{'' if strict else '='} high in {bracket}{low}, {high}]"
    ok = isinstance(value, tuple) and len(value) == 2
    if ok:
        ok = all(_is_number(v) and (not integer or isinstance(v, int)) for v in value)
    if ok:
        lo, hi = value
        ok = (lo > low if open_low else lo >= low) and hi <= high
        ok = ok and (lo < hi if strict else lo <= hi)
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
