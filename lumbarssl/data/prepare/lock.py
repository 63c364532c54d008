"""The output-directory lock of ``lumbarssl prepare``: :mod:`lumbarssl._core.lock`."""

from __future__ import annotations

from lumbarssl._core.lock import LOCK_FILE, output_lock

__all__ = ["LOCK_FILE", "output_lock"]
