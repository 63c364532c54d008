"""Intensity statistics read from prepare_meta.json are checked when a cache is opened."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _rsna_factory import make_rsna_dir

from lumbarssl.cli import main as cli_main
from lumbarssl.data.cache import META_JSON, PreparedCache, compute_roi_stats
from lumbarssl.data.prepare import PrepareConfig, prepare_cache
from lumbarssl.errors import DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixture = make_rsna_dir(tmp_path_factory.mktemp("rsna"), n_plain=2)
    out = tmp_path_factory.mktemp("cache")
    prepare_cache(fixture.root, out, PrepareConfig(roi_size=32, localizer_size=64), progress=False)
    return out


def _with_stats(prepared: Path, tmp_path: Path, stats: object) -> Path:
    copy = tmp_path / "cache"
    copy.mkdir()
    for item in prepared.iterdir():
        if item.is_file():
            (copy / item.name).write_bytes(item.read_bytes())
    meta = json.loads((prepared / META_JSON).read_text())
    meta["roi_stats"] = stats
    (copy / META_JSON).write_text(json.dumps(meta))
    return copy


def test_the_stats_prepare_writes_are_accepted_and_exact(prepared: Path) -> None:
    cache = PreparedCache.open(prepared)
    assert cache.roi_stats() == pytest.approx(compute_roi_stats(cache.rois))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("std", 1e-30),
        ("std", math.nan),
        ("std", -0.2),
        ("std", 0.0),
        ("std", 0.7),  # above 0.5: impossible for values in [0, 1]
        ("std", "0.2"),
        ("mean", math.nan),
        ("mean", -0.1),
        ("mean", 1.5),
        ("mean", None),
    ],
)
def test_impossible_stats_are_a_data_error_naming_file_and_key(
    prepared: Path, tmp_path: Path, key: str, value: object
) -> None:
    stats = {"mean": 0.3, "std": 0.2} | {key: value}
    cache_dir = _with_stats(prepared, tmp_path, stats)
    with pytest.raises(DataError) as info:
        PreparedCache.open(cache_dir)
    message = str(info.value)
    assert f"{cache_dir / META_JSON}: roi_stats.{key} is {value!r}" in message
    assert "re-run `lumbarssl prepare" in message
    assert "\n" not in message


def test_cli_exits_2_with_one_line_on_bad_stats(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = _with_stats(prepared, tmp_path, {"mean": 0.3, "std": 1e-30})
    out = tmp_path / "out"
    assert cli_main(["pretrain", "--cache-dir", str(cache_dir), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "roi_stats.std is 1e-30" in err
