from __future__ import annotations

import json
from pathlib import Path

import pytest

from lumbarssl.cli import build_parser
from lumbarssl.cli._dataclass_args import dataclass_from_args
from lumbarssl.pipeline.evaluate import EvaluateConfig
from lumbarssl.pipeline.finetune import FinetuneConfig
from lumbarssl.pipeline.localize import LocalizerConfig
from lumbarssl.pipeline.pretrain import PretrainConfig

PATHS = {"cache_dir": "cache", "out_dir": "out"}


def test_pretrain_defaults_are_the_papers() -> None:
    config = PretrainConfig(cache_dir="cache", out_dir="out")
    # Sec. 3.4 (V=3), Sec. 4.3 (tau=0.1, 60 epochs, clipping), Sec. 4.2 (224 input)
    assert (config.views, config.temperature, config.epochs) == (3, 0.1, 60)
    assert config.max_grad_norm is not None
    assert config.input_size == 224


def test_finetune_defaults_are_the_papers() -> None:
    config = FinetuneConfig(cache_dir="cache", out_dir="out", encoder="enc.pt")
    # Sec. 4.4: layer4 5e-5, head 5e-4, focal gamma 2, alpha [0.8, 4, 5], 40 epochs, batch 24,
    # ReduceLROnPlateau patience 4 factor 0.5; Sec. 4.1: 20 % held out at the disc level.
    assert (config.backbone_lr, config.head_lr) == (5e-5, 5e-4)
    assert (config.gamma, config.alpha) == (2.0, (0.8, 4.0, 5.0))
    assert (config.epochs, config.batch_size) == (40, 24)
    assert (config.plateau_patience, config.plateau_factor) == (4, 0.5)
    assert (config.split, config.test_size, config.mode) == ("disc", 0.2, "finetune")


def test_localizer_defaults_are_the_papers() -> None:
    config = LocalizerConfig(cache_dir="cache", out_dir="out")
    # Sec. 4.5: AdamW 1e-4, weight decay 0.01, batch 32, patience 3, factor 0.1, 256 input;
    # Sec. 5.3: 40 epochs.
    assert (config.lr, config.weight_decay, config.batch_size) == (1e-4, 0.01, 32)
    assert (config.plateau_patience, config.plateau_factor) == (3, 0.1)
    assert (config.input_size, config.epochs) == (256, 40)
    assert config.weights is None  # nothing downloads by default


@pytest.mark.parametrize(
    ("cls", "extra"),
    [
        (PretrainConfig, {}),
        (FinetuneConfig, {"mode": "linear_probe", "encoder": "e.pt", "alpha": (1.0, 2.0, 3.0)}),
        (LocalizerConfig, {"weights": "IMAGENET1K_V1"}),
        (EvaluateConfig, {"checkpoint": "m.pt", "subset": "val"}),
    ],
)
def test_configs_round_trip_through_json(
    cls: type[PretrainConfig], extra: dict[str, object], tmp_path: Path
) -> None:
    config = cls(cache_dir="cache", out_dir="out", seed=5, **extra)  # type: ignore[arg-type]
    path = tmp_path / "c.json"
    config.save(path)
    assert cls.load(path) == config
    assert json.loads(path.read_text())["seed"] == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache_dir": ""}, "cache_dir is required"),
        ({"split": "patient"}, "split must be 'disc' or 'study', got 'patient'"),
        ({"test_size": 1.5}, r"test_size must be in \(0, 1\), got 1.5"),
        ({"val_size": 0.5, "test_size": 0.5}, "val_size \\+ test_size must be < 1"),
        ({"views": 1}, "views must be >= 2"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ],
)
def test_pretrain_config_names_bad_values(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {**PATHS, **kwargs}
    with pytest.raises(ValueError, match=message):
        PretrainConfig(**values)  # type: ignore[arg-type]


def test_finetune_needs_an_encoder_unless_scratch() -> None:
    with pytest.raises(ValueError, match="'linear_probe' starts from a pretrained encoder"):
        FinetuneConfig(cache_dir="cache", out_dir="out", mode="linear_probe")
    assert FinetuneConfig(cache_dir="cache", out_dir="out", mode="scratch").encoder is None


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown PretrainConfig key 'epoch'"):
        PretrainConfig.from_dict({**PATHS, "epoch": 3})


def test_cli_exposes_every_field_with_the_config_default() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["finetune", "--cache-dir", "c", "--out-dir", "o", "--mode", "linear-probe",
         "--encoder", "e.pt", "--alpha", "1", "2", "3", "--epochs", "7", "--no-channels-last"]
    )  # fmt: skip
    config = dataclass_from_args(FinetuneConfig, args)
    assert config.mode == "linear_probe"
    assert config.alpha == (1.0, 2.0, 3.0)
    assert config.epochs == 7
    # untouched options keep the paper's defaults
    assert config.backbone_lr == 5e-5
    assert config.batch_size == 24


def test_cli_rejects_unknown_choice() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--cache-dir", "c", "--out-dir", "o", "--mode", "probe"])


def test_every_stage_subcommand_is_registered() -> None:
    parser = build_parser()
    for command in ("pretrain", "finetune", "train-localizer", "evaluate", "predict"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([command, "--help"])
        assert info.value.code == 0
