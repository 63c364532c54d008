from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lumbarssl
from lumbarssl.cli import main
from lumbarssl.data import constants


def test_version_is_pep440_like() -> None:
    parts = lumbarssl.__version__.split(".")
    assert len(parts) >= 2
    assert all(p.isdigit() for p in parts[:2])


def test_py_typed_marker_ships_at_package_root() -> None:
    assert (Path(lumbarssl.__file__).parent / "py.typed").is_file()


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert lumbarssl.__version__ in capsys.readouterr().out


def test_cli_without_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: lumbarssl" in capsys.readouterr().err


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lumbarssl", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert lumbarssl.__version__ in result.stdout


def test_train_csv_columns_follow_rsna_order() -> None:
    cols = constants.TRAIN_COLUMNS
    assert len(cols) == 26
    assert cols[0] == "study_id"
    assert cols[1] == "spinal_canal_stenosis_l1_l2"
    assert cols[5] == "spinal_canal_stenosis_l5_s1"
    assert cols[6] == "left_neural_foraminal_narrowing_l1_l2"
    assert cols[-1] == "right_subarticular_stenosis_l5_s1"
    assert constants.SEVERITY_TO_LABEL == {"Normal/Mild": 0, "Moderate": 1, "Severe": 2}
