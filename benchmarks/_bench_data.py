"""A benchmark dataset in the RSNA layout: the synthetic generator if present, else plain DICOMs.

The fallback writer makes uncompressed 16-bit sagittal series of random texture (content does
not change decoding cost), five annotated discs on the middle slice of each study.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from lumbarssl.data.constants import (
    COORDINATE_COLUMNS,
    COORDINATES_CSV,
    IMAGES_DIR,
    LEVELS,
    SAGITTAL_T2,
    SERIES_COLUMNS,
    SERIES_CSV,
    SPINAL_CANAL,
    TRAIN_COLUMNS,
    TRAIN_CSV,
)


def build_dataset(out_dir: Path, n_studies: int, *, seed: int = 0, size: int = 512) -> str:
    """Write a dataset into ``out_dir``; return which writer made it.

    ``size`` is the side of the fallback writer's images (RSNA sagittal T2 are mostly
    384-640 pixels); the synthetic generator chooses its own.
    """
    try:
        from lumbarssl.synthetic import (  # type: ignore[import-not-found, unused-ignore]
            SyntheticConfig,
            generate_dataset,
        )
    except ImportError:
        _write_plain(out_dir, n_studies, seed=seed, size=size)
        return f"plain DICOM writer (benchmarks/_bench_data.py), {size}x{size}, 15 slices/series"
    generate_dataset(
        out_dir, SyntheticConfig(n_studies=n_studies, seed=seed), workers=1, progress=False
    )
    return "lumbarssl.synthetic"


def _slice(pixels: np.ndarray, instance: int, position: float, uids: tuple[str, str]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 4.0
    ds.ImagePositionPatient = [position, -120.0, 100.0]
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def _write_plain(
    out_dir: Path, n_studies: int, *, seed: int, size: int, n_slices: int = 15
) -> None:
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, series_rows, coordinates = [], [], []
    for s in range(n_studies):
        study, series = 100_000 + s, 1_000_000 + s
        folder = out_dir / IMAGES_DIR / str(study) / str(series)
        folder.mkdir(parents=True, exist_ok=True)
        uids = (generate_uid(), generate_uid())
        for k in range(n_slices):
            pixels = rng.integers(0, 2000, size=(size, size))
            ds = _slice(pixels, k + 1, -4.0 * k, uids)
            pydicom.dcmwrite(folder / f"{k + 1}.dcm", ds, enforce_file_format=True)
        grades = rng.choice(["Normal/Mild", "Moderate", "Severe"], p=[0.85, 0.1, 0.05], size=5)
        train.append([study, *grades, *(["Normal/Mild"] * 20)])
        series_rows.append([study, series, SAGITTAL_T2])
        for i, level in enumerate(LEVELS):
            x, y = size * 0.5 + rng.normal(0, 5), size * (0.2 + 0.15 * i)
            coordinates.append([study, series, n_slices // 2 + 1, SPINAL_CANAL, level, x, y])
    for name, header, rows in (
        (TRAIN_CSV, TRAIN_COLUMNS, train),
        (SERIES_CSV, SERIES_COLUMNS, series_rows),
        (COORDINATES_CSV, COORDINATE_COLUMNS, coordinates),
    ):
        with (out_dir / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
