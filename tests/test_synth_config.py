from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from lumbarssl.synthetic import SyntheticConfig


def test_defaults_follow_the_rsna_layout_ranges() -> None:
    config = SyntheticConfig()
    assert config.image_size_range == (256, 640)
    assert config.pixel_spacing_range == (0.3, 1.2)
    assert config.slices_range == (9, 20)
    assert config.slice_spacing_range == (3.0, 6.0)


def test_json_round_trip_is_exact() -> None:
    config = SyntheticConfig(
        n_studies=7, seed=3, image_size_range=(64, 96), pixel_spacing_range=(2.0, 4.0)
    )
    text = config.to_json()
    assert SyntheticConfig.from_json(text) == config
    assert json.loads(text)["image_size_range"] == [64, 96]


def test_round_trip_through_a_file(tmp_path: Any) -> None:
    config = SyntheticConfig(reader_noise_sd=0.05, stenosis_prevalence=(0.1, 0.1, 0.1, 0.1, 0.1))
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert SyntheticConfig.from_json(path.read_text()) == config


def test_missing_keys_take_defaults_and_unknown_keys_fail() -> None:
    assert SyntheticConfig.from_dict({"seed": 5}) == SyntheticConfig(seed=5)
    with pytest.raises(ValueError, match=r"unknown SyntheticConfig key 'colour'"):
        SyntheticConfig.from_dict({"colour": "blue"})
    with pytest.raises(ValueError, match="must be an object"):
        SyntheticConfig.from_json("[1, 2]")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_studies", 0, "n_studies must be an integer >= 1, got 0"),
        ("seed", -1, "seed must be an integer >= 0"),
        ("image_size_range", (640, 256), "image_size_range must be two integers"),
        ("image_size_range", (16, 32), "image_size_range"),
        ("pixel_spacing_range", (0.0, 1.0), "pixel_spacing_range"),
        ("slices_range", (3.5, 4), "slices_range must be two integers"),
        ("p_rescale", 1.5, r"p_rescale must be a number in \[0.0, 1.0\], got 1.5"),
        ("p_axial_t2", -0.1, "p_axial_t2"),
        ("grade_thresholds", (0.7, 0.4), "grade_thresholds"),
        ("grade_thresholds", (0.4, 1.0), "grade_thresholds must lie in"),
        ("reader_noise_sd", -0.1, "reader_noise_sd"),
        ("stenosis_prevalence", (0.1, 0.1), "one probability per level"),
        ("stenosis_prevalence", (0.1, 0.1, 2.0, 0.1, 0.1), "stenosis_prevalence"),
        ("healthy_r_beta", (0.0, 1.0), "healthy_r_beta must be two positive numbers"),
        ("field_of_view_range", (100.0, 300.0), "field_of_view_range"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**{field: value})


def test_sizes_that_cannot_reach_the_field_of_view_are_rejected() -> None:
    # 64 px at most 1.2 mm cover 77 mm, far below the 220 mm the default field of view needs.
    with pytest.raises(ValueError, match="cannot reach field_of_view_range") as info:
        SyntheticConfig(image_size_range=(64, 96))
    # The message suggests a spacing range that works; check that it does.
    suggested = str(info.value).split("pixel_spacing_range=(")[1].rstrip(")").split(", ")
    SyntheticConfig(
        image_size_range=(64, 96), pixel_spacing_range=(float(suggested[0]), float(suggested[1]))
    )
    with pytest.raises(ValueError, match="exceed field_of_view_range"):
        SyntheticConfig(pixel_spacing_range=(1.0, 1.2), image_size_range=(256, 640))


def test_config_is_frozen() -> None:
    config = SyntheticConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
