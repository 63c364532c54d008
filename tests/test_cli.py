"""The ``lumbarssl`` command line as one program: exit codes, typed flags against --config.

Stages are replaced by recorders (monkeypatch), so these tests check the command line alone:
what configuration a command line produces and which exit status an error gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import lumbarssl.cli.predict
import lumbarssl.cli.prepare
import lumbarssl.cli.pretrain
import lumbarssl.cli.synth
from lumbarssl._core.config import ConfigBase
from lumbarssl.cli import main
from lumbarssl.cli._command import register_command
from lumbarssl.cli._dataclass_args import add_dataclass_arguments, config_from_args
from lumbarssl.data.dicom import MissingDecoderError
from lumbarssl.data.prepare import PrepareConfig
from lumbarssl.errors import TrainingDivergedError
from lumbarssl.pipeline import PretrainConfig
from lumbarssl.pipeline.predict_config import PredictConfig
from lumbarssl.synthetic import SyntheticConfig

ROOT = Path(__file__).resolve().parent.parent
STAGE = ["pretrain", "--cache-dir", "c", "--out-dir", "o"]


def _record(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[tuple[Any, ...]]:
    """Replace ``module.name`` (a command's run function) by one that records its arguments."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(module, name, lambda *args: calls.append(args))
    return calls


def _raise(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def stage(config: PretrainConfig) -> None:
        raise error

    monkeypatch.setattr(lumbarssl.cli.pretrain, "run_pretraining", stage)


def _write(path: Path, data: dict[str, Any]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


# --- exit codes ---------------------------------------------------------------------------


def test_success_is_0(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record(monkeypatch, lumbarssl.cli.pretrain, "run_pretraining")
    assert main(STAGE) == 0
    assert len(calls) == 1


def test_synth_really_runs_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    small = ["--image-size-range", "64", "64", "--pixel-spacing-range", "3", "4"]
    assert main(["synth", str(out), "--studies", "1", "--quiet", *small]) == 0
    assert "1 studies" in capsys.readouterr().out
    assert json.loads((out / "synthetic_meta.json").read_text())["parameters"]["n_studies"] == 1


def test_unknown_flag_is_a_usage_error_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*STAGE, "--no-such-flag", "1"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_unknown_config_key_is_a_usage_error_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = _write(tmp_path / "stage_config.json", {"cache_dir": "c", "out_dir": "o", "epoch": 3})
    with pytest.raises(SystemExit) as info:
        main(["pretrain", "--config", saved])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown PretrainConfig key 'epoch'" in err
    assert "epochs" in err  # the known keys are listed


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_unreadable_config_file_is_a_usage_error_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["synth", str(tmp_path / "out"), "--config", str(path)])
    assert info.value.code == 2
    assert str(path) in capsys.readouterr().err


def test_missing_input_file_is_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["prepare", str(tmp_path / "empty"), str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("lumbarssl prepare: error: ")
    assert "train.csv" in err or "train_series_descriptions.csv" in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_incomplete_cache_is_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", "--cache-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert code == 2
    assert "not a completed prepare output" in capsys.readouterr().err


def test_predict_on_a_missing_series_is_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["predict", str(tmp_path / "nope"), "--localizer", "l.pt", "--classifier", "c.pt"])
    assert code == 2
    assert "is not a directory of DICOM files" in capsys.readouterr().err


def test_missing_decoder_is_an_environment_problem_3(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def prepare(*args: Any, **kwargs: Any) -> None:
        raise MissingDecoderError(tmp_path / "1.dcm", "JPEG 2000 needs pylibjpeg")

    monkeypatch.setattr(lumbarssl.cli.prepare, "prepare_cache", prepare)
    assert main(["prepare", str(tmp_path), str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert err == f"lumbarssl prepare: error: {tmp_path / '1.dcm'}: JPEG 2000 needs pylibjpeg\n"


def test_divergence_is_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _raise(monkeypatch, TrainingDivergedError(epoch=3, step=7, loss=float("nan"), checkpoint=None))
    assert main(STAGE) == 4
    err = capsys.readouterr().err
    assert err.startswith("lumbarssl pretrain: error: training diverged: loss is nan at epoch 3")
    assert err.count("\n") == 1


@pytest.mark.parametrize("error", [ValueError("deep bug"), TypeError("deep bug"), KeyError("k")])
def test_untyped_errors_from_a_stage_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # A ValueError deep inside training is a bug, not bad input: it must not be swallowed.
    _raise(monkeypatch, error)
    with pytest.raises(type(error)):
        main(STAGE)


def test_unexpected_error_exits_1_with_its_traceback(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import lumbarssl.cli.pretrain as pretrain
        from lumbarssl.cli import main

        def stage(config):
            raise RuntimeError("an unexpected bug")

        pretrain.run_pretraining = stage
        sys.exit(main(["pretrain", "--cache-dir", "c", "--out-dir", "o"]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (tmp_path / "run.py").write_text(script)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "run.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert 'raise RuntimeError("an unexpected bug")' in result.stderr
    assert result.stderr.rstrip().endswith("RuntimeError: an unexpected bug")


# --- a typed flag beats --config ----------------------------------------------------------


def test_stage_typed_flag_beats_config_even_at_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = _record(monkeypatch, lumbarssl.cli.pretrain, "run_pretraining")
    saved = PretrainConfig(cache_dir="c", out_dir="o", seed=5, epochs=9, temperature=0.3)
    path = tmp_path / "stage_config.json"
    saved.save(path)
    assert main(["pretrain", "--config", str(path), "--seed", "0", "--temperature", "0.1"]) == 0
    (config,) = calls[0]
    assert config.seed == 0  # typed, equal to the default: still wins
    assert config.temperature == 0.1  # typed, equal to the default
    assert config.epochs == 9  # not typed: from the saved config
    assert config == dataclasses.replace(saved, seed=0, temperature=0.1)


def test_prepare_typed_flag_beats_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _record(monkeypatch, lumbarssl.cli.prepare, "run")
    path = _write(tmp_path / "prepare.json", {"roi_size": 32, "slices": 3, "on_error": "raise"})
    args = ["prepare", "d", "o", "--config", path, "--roi-size", "96", "--on-error", "skip"]
    assert main([*args, "--png-compression", "9", "--no-progress", "--workers", "2"]) == 0
    config, options = calls[0]
    assert config == PrepareConfig(roi_size=96, slices=3, on_error="skip", png_compress_level=9)
    assert (options.data_dir, options.out_dir, options.workers, options.progress) == (
        "d",
        "o",
        2,
        False,
    )


def test_synth_typed_flag_beats_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _record(monkeypatch, lumbarssl.cli.synth, "run")
    saved = SyntheticConfig(n_studies=7, seed=3, reader_noise_sd=0.2)
    path = tmp_path / "small.json"
    path.write_text(saved.to_json())
    assert main(["synth", "out", "--config", str(path), "--seed", "0", "--quiet"]) == 0
    config, options = calls[0]
    assert config == dataclasses.replace(saved, seed=0)
    assert (options.out_dir, options.progress, options.overwrite) == ("out", False, False)
    assert main(["synth", "out", "--studies", "2", "--overwrite"]) == 0
    config, options = calls[1]
    assert config == SyntheticConfig(n_studies=2)
    assert options.overwrite
    assert options.progress


def test_predict_typed_flag_beats_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _record(monkeypatch, lumbarssl.cli.predict, "run_predict")
    saved = {"series_dir": "s0", "localizer": "l.pt", "classifier": "c.pt", "device": "cpu"}
    path = _write(tmp_path / "predict.json", saved)
    assert main(["predict", "s1", "--config", path, "--device", "auto"]) == 0
    (config,) = calls[0]
    assert config == PredictConfig(
        series_dir="s1", localizer="l.pt", classifier="c.pt", device="auto"
    )


def test_predict_requires_its_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["predict", "series"])
    assert info.value.code == 2
    assert "required: --localizer, --classifier" in capsys.readouterr().err


# --- nested configs become unprefixed flags ------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Runtime(ConfigBase):
    """Toy runtime settings.

    Attributes:
        device: Where to run.
        amp: Mixed precision.
    """

    device: str = "auto"
    amp: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Stage(ConfigBase):
    """Toy stage.

    Attributes:
        epochs: How long.
        runtime: Hardware settings.
    """

    epochs: int = 3
    runtime: _Runtime = dataclasses.field(default_factory=lambda: _Runtime(amp=True))


def _parse(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, _Stage)
    return parser, parser.parse_args(argv)


def test_nested_config_fields_are_unprefixed_flags() -> None:
    parser, args = _parse(["--device", "cpu", "--epochs", "5"])
    assert config_from_args(_Stage, args) == _Stage(
        epochs=5, runtime=_Runtime(device="cpu", amp=True)
    )
    # an untouched nested config keeps the parent's default instance
    assert config_from_args(_Stage, _parse([])[1]) == _Stage()
    assert "--runtime" not in parser.format_help()
    assert "Where to run (default: auto)" in " ".join(parser.format_help().split())
    assert "(default: True)" in parser.format_help()  # amp: the parent's default, not the class's


def test_nested_saved_config_reads_nested_or_flat() -> None:
    _, args = _parse(["--amp"])
    nested = {"epochs": 4, "runtime": {"device": "cuda", "amp": False}}
    flat = {"epochs": 4, "device": "cuda", "amp": False}
    for saved in (nested, flat):
        config = config_from_args(_Stage, args, saved=saved)
        assert config == _Stage(epochs=4, runtime=_Runtime(device="cuda", amp=True))
    assert _Stage.from_dict(_Stage(epochs=4).to_dict()) == _Stage(epochs=4)


def test_clashing_nested_names_are_refused() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Clash(ConfigBase):
        device: str = "x"
        runtime: _Runtime = dataclasses.field(default_factory=_Runtime)

    import argparse

    with pytest.raises(TypeError, match="--device"):
        add_dataclass_arguments(argparse.ArgumentParser(), Clash)


def test_settings_and_run_options_must_not_share_names() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options(ConfigBase):
        seed: int = 1

    subparsers = argparse.ArgumentParser().add_subparsers()
    with pytest.raises(TypeError, match="seed"):
        register_command(
            subparsers, "x", PretrainConfig, print, options_cls=Options, help="", description=""
        )


@pytest.mark.parametrize(
    "command",
    ["synth", "prepare", "pretrain", "finetune", "train-localizer", "evaluate", "predict"],
)
def test_every_command_is_generated_with_a_config_option(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "--config JSON" in capsys.readouterr().out


def test_a_second_stage_run_into_a_locked_directory_stops_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run that holds the output directory (another process in real life): the second run
    # stops before it reads or writes anything there, with one line naming the directory.
    from lumbarssl._core.lock import output_lock

    out = tmp_path / "run"
    out.mkdir()
    with output_lock(out, "lumbarssl pretrain"):
        code = main(["pretrain", "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)])
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(out) in err
    assert "another lumbarssl run" in err
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, the lock file gone
