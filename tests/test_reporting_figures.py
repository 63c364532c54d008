from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lumbarssl.pipeline import LevelPrediction, SeriesPrediction, write_prediction
from lumbarssl.reporting.figures import plot_prediction_overlay

pytest.importorskip("matplotlib")


def _prediction() -> SeriesPrediction:
    levels = tuple(
        LevelPrediction(
            level=level,
            x=20.0 + 5 * i,
            y=10.0 + 10 * i,
            grade=grade,
            probabilities={"Normal/Mild": 0.2, "Moderate": 0.3, "Severe": 0.5},
        )
        for i, (level, grade) in enumerate(
            zip(
                ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"),
                ("Severe", "Moderate", "Normal/Mild", "Severe", "Moderate"),
                strict=True,
            )
        )
    )
    return SeriesPrediction(
        series_dir="study/series",
        instance_number=8,
        slice_shape=(64, 48),
        levels=levels,
        provenance={"classifier": {"data_source": "synthetic", "profile": "smoke", "seed": 0}},
    )


def test_write_prediction_draws_a_series_prediction(tmp_path: Path) -> None:
    # The figure knows predictions only through its protocol; the pipeline's type must fit it.
    prediction = _prediction()
    image = np.random.default_rng(0).random((64, 48))
    json_path, png_path = write_prediction(prediction, image, tmp_path / "out")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(prediction.to_dict()))
    with Image.open(png_path) as png:
        assert png.format == "PNG"
        assert min(png.size) > 100
    again = plot_prediction_overlay(image, prediction, tmp_path / "again.png")
    assert again.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
