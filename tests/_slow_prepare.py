"""``lumbarssl prepare`` with every study slowed down, so that a test can kill it mid-run.

Usage: ``python tests/_slow_prepare.py SECONDS_PER_STUDY prepare DATA OUT [options]``. The
delay is added before each study (in the worker processes too: they are forked from this
one); what each study writes is unchanged.
"""

from __future__ import annotations

import sys
import time

import lumbarssl.data.prepare.writer as writer
from lumbarssl.cli import main

_real_run_study = writer._run_study


def _slow_run_study(task: writer._StudyTask) -> int:
    time.sleep(float(sys.argv[1]))
    return _real_run_study(task)


if __name__ == "__main__":
    writer._run_study = _slow_run_study
    sys.exit(main(sys.argv[2:]))
