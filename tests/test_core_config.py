"""One config base: round trips, the unknown-key check, deprecated call forms, composition."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

import pytest

from lumbarssl._core.config import ConfigBase, param
from lumbarssl.cli import build_parser
from lumbarssl.cli._dataclass_args import dataclass_from_args
from lumbarssl.cli._stages import register_stage
from lumbarssl.data.prepare import PrepareConfig
from lumbarssl.errors import ConfigError
from lumbarssl.pipeline._common import STAGE_CONFIG_FILE, prepare_out_dir, trainer_config
from lumbarssl.pipeline.config import StageConfig
from lumbarssl.pipeline.evaluate import EvaluateConfig
from lumbarssl.pipeline.finetune import FinetuneConfig
from lumbarssl.pipeline.localize import LocalizerConfig
from lumbarssl.pipeline.pretrain import PretrainConfig
from lumbarssl.synthetic import SyntheticConfig
from lumbarssl.training import RuntimeConfig, TrainerConfig

EVERY_CONFIG: list[ConfigBase] = [
    PrepareConfig(),
    SyntheticConfig(),
    TrainerConfig(epochs=1, out_dir="out"),
    RuntimeConfig(),
    PretrainConfig(cache_dir="cache", out_dir="out"),
    FinetuneConfig(cache_dir="cache", out_dir="out", encoder="e.pt"),
    LocalizerConfig(cache_dir="cache", out_dir="out"),
    EvaluateConfig(cache_dir="cache", out_dir="out", checkpoint="m.pt"),
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Paths(ConfigBase):
    root: Path = Path("/data")
    sizes: tuple[int, ...] = (1, 2)
    maybe: Path | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer(ConfigBase):
    name: str = param("x", "a name")
    paths: _Paths = _Paths()


@pytest.mark.parametrize("config", EVERY_CONFIG, ids=lambda c: type(c).__name__)
def test_every_config_is_a_frozen_keyword_only_config_base(config: ConfigBase) -> None:
    assert isinstance(config, ConfigBase)
    params = dataclasses.fields(config)
    assert all(f.kw_only for f in params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, params[0].name, None)


@pytest.mark.parametrize("config", EVERY_CONFIG, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_dict_json_and_file(
    config: ConfigBase, tmp_path: Path
) -> None:
    cls = type(config)
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert cls.from_json(config.to_json()) == config
    config.save(tmp_path / "c.json")
    assert cls.load(tmp_path / "c.json") == config


@pytest.mark.parametrize("config", EVERY_CONFIG, ids=lambda c: type(c).__name__)
def test_every_config_names_an_unknown_key_and_the_known_ones(config: ConfigBase) -> None:
    known = sorted(f.name for f in dataclasses.fields(config))
    with pytest.raises(ConfigError, match="unknown") as info:
        type(config).from_dict({**config.to_dict(), "colour": "blue"})
    message = str(info.value)
    assert f"unknown {type(config).__name__} key 'colour'" in message
    assert message.endswith("known keys: " + ", ".join(known))


def test_paths_tuples_and_nested_configs_convert_both_ways() -> None:
    config = _Outer(paths=_Paths(root=Path("/x/y"), sizes=(3, 4, 5), maybe=Path("z")))
    data = config.to_dict()
    assert data == {"name": "x", "paths": {"root": "/x/y", "sizes": [3, 4, 5], "maybe": "z"}}
    back = _Outer.from_dict(json.loads(json.dumps(data)))
    assert back == config
    assert isinstance(back.paths.root, Path)
    assert isinstance(back.paths.sizes, tuple)


def test_load_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ConfigError, match=r"bad\.json: a _Paths JSON must be an object, got list"):
        _Paths.load(tmp_path / "bad.json")


# --------------------------------------------------------------------- deprecated call forms


def test_positional_prepare_config_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="positional arguments to PrepareConfig"):
        config = PrepareConfig(64, 3)  # type: ignore[call-arg]
    assert config == PrepareConfig(roi_size=64, slices=3)


def test_positional_synthetic_config_follows_the_old_field_order() -> None:
    with pytest.warns(DeprecationWarning, match="positional arguments to SyntheticConfig"):
        config = SyntheticConfig(7, 3, (300, 400))  # type: ignore[call-arg]
    assert config == SyntheticConfig(n_studies=7, seed=3, image_size_range=(300, 400))
    # The old positional order is the declaration order; later fields are keyword-only.
    names = [f.name for f in dataclasses.fields(SyntheticConfig)]
    old = SyntheticConfig._positional_fields
    assert tuple(names[: len(old)]) == old


def test_positional_and_keyword_for_one_field_is_an_error() -> None:
    with (
        pytest.warns(DeprecationWarning, match="positional arguments to PrepareConfig"),
        pytest.raises(TypeError, match="multiple values for 'roi_size'"),
    ):
        PrepareConfig(64, roi_size=32)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cls", "args"),
    [(TrainerConfig, (1, "out")), (StageConfig, ("cache", "out")), (RuntimeConfig, ("cpu",))],
)
def test_new_and_keyword_only_configs_refuse_positional_arguments(
    cls: type[ConfigBase], args: tuple[object, ...]
) -> None:
    with pytest.raises(TypeError, match="keyword arguments only"):
        cls(*args)


# --------------------------------------------------------------------------- composition


def test_stage_and_trainer_share_one_runtime_object() -> None:
    runtime = RuntimeConfig(device="cpu", amp="off", channels_last=True, progress="lines")
    stage = PretrainConfig(cache_dir="cache", out_dir="out", runtime=runtime)
    trainer = trainer_config(stage, epochs=2)
    assert trainer.runtime is stage.runtime
    assert trainer.out_dir == stage.out_dir


def test_flat_runtime_keywords_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"moved into the nested config 'runtime'"):
        stage = FinetuneConfig(  # type: ignore[call-arg]
            cache_dir="cache",
            out_dir="out",
            mode="scratch",
            device="cpu",
            num_workers=0,
        )
    assert stage.runtime == RuntimeConfig(device="cpu", num_workers=0)
    with pytest.warns(DeprecationWarning, match="moved into the nested config 'runtime'"):
        trainer = TrainerConfig(epochs=1, out_dir="o", amp="bf16")  # type: ignore[call-arg]
    assert trainer.runtime.amp == "bf16"
    with pytest.warns(DeprecationWarning, match=r"PretrainConfig\.device moved to"):
        assert PretrainConfig(cache_dir="cache", out_dir="out").device == "auto"  # type: ignore[attr-defined]


def test_old_flat_stage_config_files_still_load(tmp_path: Path) -> None:
    # The layout `stage_config.json` had before the runtime settings were nested.
    flat = {
        "cache_dir": "cache",
        "out_dir": "out",
        "split": "study",
        "seed": 3,
        "device": "cpu",
        "amp": "off",
        "channels_last": False,
        "compile": False,
        "num_workers": 2,
        "progress": "lines",
        "resume": False,
        "data_source": "synthetic",
        "profile": "smoke",
        "epochs": 2,
    }
    path = tmp_path / "stage_config.json"
    path.write_text(json.dumps(flat))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading an old file is not deprecated
        config = PretrainConfig.load(path)
    # An old file's explicit channels_last=False stays off (the default is now auto).
    assert config.runtime == RuntimeConfig(
        device="cpu", amp="off", channels_last=False, num_workers=2, progress="lines"
    )
    assert (config.split, config.seed, config.epochs) == ("study", 3, 2)
    flattened = PretrainConfig.flatten_dict(config.to_dict())
    assert {key: flattened[key] for key in flat} == flat
    assert "runtime" not in flattened


def test_resume_accepts_an_old_flat_file_and_refuses_changed_settings(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = PretrainConfig(cache_dir="c", out_dir=str(out), runtime=RuntimeConfig(device="cpu"))
    out.mkdir()
    flat = PretrainConfig.flatten_dict(config.to_dict())
    (out / STAGE_CONFIG_FILE).write_text(json.dumps(flat))
    # Same settings written flat by an earlier release, another device: resume goes on.
    resumed = dataclasses.replace(config, resume=True, runtime=RuntimeConfig(device="auto"))
    assert prepare_out_dir(resumed) == out
    saved = json.loads((out / STAGE_CONFIG_FILE).read_text())
    assert saved["runtime"]["device"] == "auto"  # rewritten in the nested layout
    changed = dataclasses.replace(resumed, runtime=RuntimeConfig(amp="off"), epochs=7)
    with pytest.raises(ValueError, match=r"amp: 'auto' -> 'off', epochs: 60 -> 7"):
        prepare_out_dir(changed)


def test_cli_keeps_the_flat_runtime_flags(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["pretrain", "--cache-dir", "c", "--out-dir", "o", "--device", "cpu", "--amp", "off",
         "--num-workers", "0", "--progress", "off", "--channels-last"]
    )  # fmt: skip
    config = dataclass_from_args(PretrainConfig, args)
    assert config.runtime == RuntimeConfig(
        device="cpu", amp="off", num_workers=0, progress="off", channels_last=True
    )


def test_trainer_to_json_with_a_path_is_deprecated_but_writes(tmp_path: Path) -> None:
    config = TrainerConfig(epochs=3, out_dir="o", runtime=RuntimeConfig(device="cpu"))
    with pytest.warns(DeprecationWarning, match=r"use TrainerConfig\.save"):
        config.to_json(tmp_path / "c.json")
    assert TrainerConfig.load(tmp_path / "c.json") == config
    with pytest.warns(DeprecationWarning, match=r"use TrainerConfig\.load"):
        assert TrainerConfig.from_json(tmp_path / "c.json") == config


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_cli_config_file_fills_the_runtime_in_either_layout(layout: str, tmp_path: Path) -> None:
    saved = PretrainConfig(
        cache_dir="c", out_dir="o", epochs=7, runtime=RuntimeConfig(device="cpu", amp="off")
    )
    data = saved.to_dict() if layout == "nested" else PretrainConfig.flatten_dict(saved.to_dict())
    (tmp_path / "stage_config.json").write_text(json.dumps(data))
    parser = argparse.ArgumentParser()
    seen: list[PretrainConfig] = []
    register_stage(
        parser.add_subparsers(), "pretrain", PretrainConfig, seen.append, help="", description=""
    )
    args = parser.parse_args(
        ["pretrain", "--config", str(tmp_path / "stage_config.json"), "--num-workers", "3"]
    )
    assert args.func(args) == 0
    assert seen == [
        dataclasses.replace(saved, runtime=RuntimeConfig(device="cpu", amp="off", num_workers=3))
    ]


def test_disc_dataset_config_is_a_config_base_with_the_old_positional_order() -> None:
    from lumbarssl.data.datasets import DiscDatasetConfig

    with pytest.warns(DeprecationWarning, match="positional arguments to DiscDatasetConfig"):
        config = DiscDatasetConfig(96, 2, (0.9, 1.0))  # type: ignore[call-arg]
    assert config == DiscDatasetConfig(input_size=96, n_views=2, crop_scale=(0.9, 1.0))
    names = [f.name for f in dataclasses.fields(DiscDatasetConfig)]
    assert DiscDatasetConfig._positional_fields == tuple(names)
    assert DiscDatasetConfig.from_json(config.to_json()) == config  # lists back to tuples
    with pytest.raises(ConfigError, match="unknown DiscDatasetConfig key 'views'"):
        DiscDatasetConfig.from_dict({"views": 3})
