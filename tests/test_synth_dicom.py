"""The fast series writer against pydicom.dcmwrite, byte for byte."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lumbarssl.synthetic.dicom_io import (
    AXIAL_ORIENTATION,
    SAGITTAL_ORIENTATION,
    SeriesWriter,
    format_ds,
    instance_dataset,
    mr_template,
)


def _template(
    rescale: tuple[float, float] = (1.0, 0.0), rows: int = 12, cols: int = 12
) -> pydicom.Dataset:
    return mr_template(
        study_uid="1.2.826.0.1.3680043.8.498.1",
        series_uid="1.2.826.0.1.3680043.8.498.2",
        frame_uid="1.2.826.0.1.3680043.8.498.3",
        study_id=1234567,
        series_number=3,
        description="Sagittal T2/STIR",
        rows=rows,
        columns=cols,
        pixel_spacing=0.6875,
        slice_thickness=3.5,
        slice_spacing=4.0,
        orientation=SAGITTAL_ORIENTATION,
        rescale=rescale,
        window=(400.0, 800.0),
        echo_time=95.0,
        repetition_time=3200.0,
        study_date="20200101",
    )


@given(
    uid_tail=st.integers(1, 10**30),
    instance=st.integers(1, 999),
    position=st.tuples(*(st.floats(-500, 500, allow_nan=False) for _ in range(3))),
    rescale=st.sampled_from([(1.0, 0.0), (2.5, -100.0)]),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**31),
)
def test_writer_bytes_equal_dcmwrite(
    uid_tail: int,
    instance: int,
    position: tuple[float, float, float],
    rescale: tuple[float, float],
    shape: tuple[int, int],
    seed: int,
) -> None:
    template = _template(rescale, *shape)
    pixels = np.random.default_rng(seed).integers(0, 65536, shape).astype(np.uint16)
    kwargs: dict[str, Any] = {
        "sop_instance_uid": f"1.2.826.0.1.3680043.8.498.{uid_tail}",
        "instance_number": instance,
        "position": position,
        "slice_location": position[0],
        "pixels": pixels,
    }
    fast = SeriesWriter(template).encode(**kwargs)
    reference = io.BytesIO()
    pydicom.dcmwrite(reference, instance_dataset(template, **kwargs), enforce_file_format=True)
    assert fast == reference.getvalue()
    ds = pydicom.dcmread(io.BytesIO(fast))
    assert np.array_equal(ds.pixel_array, pixels)
    assert int(ds.InstanceNumber) == instance
    np.testing.assert_allclose(
        [float(v) for v in ds.ImagePositionPatient], position, rtol=1e-9, atol=1e-9
    )


def test_writer_refuses_templates_with_per_instance_elements() -> None:
    template = _template()
    template.InstanceNumber = "1"
    with pytest.raises(ValueError, match="must not hold per-instance elements"):
        SeriesWriter(template)


def test_pixels_must_be_2d_uint16(tmp_path: Path) -> None:
    writer = SeriesWriter(_template())
    with pytest.raises(ValueError, match="2-D uint16 array, got float32"):
        writer.write(
            tmp_path / "1.dcm",
            sop_instance_uid="1.2.3",
            instance_number=1,
            position=(0.0, 0.0, 0.0),
            slice_location=0.0,
            pixels=np.zeros((4, 4), np.float32),
        )


@given(st.floats(-1e6, 1e6, allow_nan=False))
def test_decimal_strings_fit_the_ds_vr(value: float) -> None:
    text = format_ds(value)
    assert len(text) <= 16
    assert float(text) == pytest.approx(value, rel=1e-6, abs=1e-6)


def test_orientations_are_unit_and_orthogonal() -> None:
    for iop in (SAGITTAL_ORIENTATION, AXIAL_ORIENTATION):
        row, col = np.array(iop[:3]), np.array(iop[3:])
        assert np.linalg.norm(row) == pytest.approx(1.0) == np.linalg.norm(col)
        assert float(np.dot(row, col)) == pytest.approx(0.0)
    # Sagittal slices are stacked along the patient's left-right axis.
    assert np.abs(np.cross(SAGITTAL_ORIENTATION[:3], SAGITTAL_ORIENTATION[3:])).tolist() == [
        1,
        0,
        0,
    ]
