"""``kill -9`` of ``lumbarssl prepare --workers 2``: the workers exit, a re-run finishes the
job byte-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lumbarssl.cli import main
from lumbarssl.data.prepare.journal import finished_studies
from lumbarssl.data.prepare.lock import LOCK_FILE
from lumbarssl.synthetic import SyntheticConfig, generate_dataset

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to find the worker processes"
)

SLOW = Path(__file__).with_name("_slow_prepare.py")
# Small images that still fit the phantom's minimum field of view (see SyntheticConfig).
SMALL = SyntheticConfig(
    n_studies=10,
    seed=5,
    image_size_range=(64, 96),
    pixel_spacing_range=(2.2, 4.0),
    field_of_view_range=(200.0, 260.0),
    slices_range=(9, 11),
)
OPTIONS = ["--roi-size", "32", "--localizer-size", "64", "--slices", "3", "--no-progress"]


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _lock_is_free(out: Path) -> bool:
    """Whether no process holds the output lock (every holder, forked workers included, gone)."""
    import fcntl

    fd = os.open(out / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing the descriptor also releases a lock taken here
    return True


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("kill")
    generate_dataset(root / "data", SMALL, progress=False)
    assert main(["prepare", str(root / "data"), str(root / "clean"), *OPTIONS]) == 0
    return root / "data", _files(root / "clean")


def _start(data: Path, out: Path, delay: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, str(SLOW), str(delay), "prepare", str(data), str(out), *OPTIONS]
    return subprocess.Popen([*argv, "--workers", "2"], env=env, stderr=subprocess.PIPE)


def test_kill_9_of_the_parent_ends_its_workers_and_a_rerun_is_byte_identical(
    dataset: tuple[Path, dict[str, bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, clean = dataset
    out = tmp_path / "out"
    process = _start(data, out, delay=0.4)
    try:
        _wait(lambda: len(_children(process.pid)) >= 2, 60, "two worker processes")
        workers = _children(process.pid)
        # A second run into the same directory is refused while the first one runs.
        assert main(["prepare", str(data), str(out), *OPTIONS]) == 3
        assert f"another lumbarssl prepare (process {process.pid})" in capsys.readouterr().err
        _wait(lambda: len(finished_studies(out)) >= 2, 60, "two finished studies")
        assert process.poll() is None, "finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        # The workers die with their parent instead of blocking on a pipe forever.
        _wait(lambda: not any(_alive(w) for w in workers), 5, f"workers {workers} to exit")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
    assert not (out / "prepare_meta.json").exists()
    assert (out / LOCK_FILE).exists()  # left by the killed run
    # The kernel frees the lock once the last process holding it (the parent and every worker
    # forked while it held the lock) has exited; on a loaded machine that can trail the
    # workers seen above by a moment.
    _wait(lambda: _lock_is_free(out), 10, "the killed run's lock to be freed")
    done = len(finished_studies(out))
    assert 2 <= done < SMALL.n_studies

    assert main(["prepare", str(data), str(out), *OPTIONS, "--workers", "2"]) == 0
    assert f"({done} studies resumed)" in capsys.readouterr().out
    assert _files(out) == clean
