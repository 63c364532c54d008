"""Run the CUDA tests of the device path where pytest is not installed (the GPU machine).

``benchmarks/gpu_check.sh`` uses pytest where it can; the lent GPU machine may have torch but
no pytest, so this runs the same test functions with their fixtures built by hand and a
minimal stand-in for the parts of pytest the test modules touch at import time.

::

    PYTHONPATH=$PWD python benchmarks/cuda_tests_without_pytest.py
"""

from __future__ import annotations

import sys
import tempfile
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _identity_decorator(*args: Any, **kwargs: Any) -> Any:
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda function: function


def _stub_pytest() -> None:
    """Enough of pytest for the test modules to import (decorators become no-ops)."""
    stub = types.ModuleType("pytest")
    mark = types.SimpleNamespace(
        skipif=_identity_decorator, parametrize=_identity_decorator, slow=_identity_decorator
    )
    stub.mark = mark  # type: ignore[attr-defined]
    stub.fixture = _identity_decorator  # type: ignore[attr-defined]
    sys.modules["pytest"] = stub


def main() -> int:
    """Build the fixtures, run the CUDA tests, print one line per test; 1 if any failed."""
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to run")
        return 0
    _stub_pytest()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    import test_data_batch_augment as augment_tests
    import test_pipeline_device_batches as stage_tests
    from _rsna_factory import make_rsna_dir

    from lumbarssl.data.cache import PreparedCache
    from lumbarssl.data.prepare import PrepareConfig, prepare_cache

    work = Path(tempfile.mkdtemp(prefix="cuda-tests-"))
    fixture = make_rsna_dir(work / "rsna", n_plain=8)
    cache_dir = work / "cache"
    config = PrepareConfig(roi_size=32, slices=3, localizer_size=64)
    prepare_cache(fixture.root, cache_dir, config, progress=False)
    cache = PreparedCache.open(cache_dir)
    tests: list[tuple[Callable[..., None], dict[str, Any]]] = [
        (augment_tests.test_cuda_gives_the_cpu_parameters_and_views, {}),
        (stage_tests.test_localizer_batches_on_cuda_equal_the_dataset_items, {"cache": cache}),
        (stage_tests.test_supervised_batches_on_cuda_match_the_dataset_items, {"cache": cache}),
        (
            stage_tests.test_pretraining_runs_on_the_cuda_device_path,
            {"cache_dir": cache_dir, "tmp_path": work / "pretrain"},
        ),
    ]
    failed = 0
    for test, kwargs in tests:
        try:
            test(**kwargs)
            print(f"PASSED {test.__name__}", flush=True)
        except Exception:
            failed += 1
            print(f"FAILED {test.__name__}\n{traceback.format_exc()}", flush=True)
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
