"""Tiny synthetic configurations shared by the tests."""

from __future__ import annotations

from lumbarssl.synthetic import SyntheticConfig


def tiny_all_conditions(n_studies: int, seed: int) -> SyntheticConfig:
    """A few small ``conditions="all"`` studies: every label and coordinate present.

    Images of 96-128 px at 1.6-2.7 mm and 5-8 slices keep generation and preparation to
    seconds while every series (Sagittal T2, Sagittal T1, Axial T2) and condition is written.
    """
    return SyntheticConfig(
        n_studies=n_studies,
        seed=seed,
        image_size_range=(96, 128),
        pixel_spacing_range=(1.6, 2.7),
        field_of_view_range=(200.0, 260.0),
        slices_range=(5, 8),
        p_missing_labels=0.0,
        p_partial_coordinates=0.0,
        conditions="all",
    )
