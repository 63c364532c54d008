"""The bottom layer of lumbarssl: helpers every other package may import.

With :mod:`lumbarssl.errors` and :mod:`lumbarssl.paper` it forms the bottom layer: it imports
nothing else from :mod:`lumbarssl` but :mod:`lumbarssl.errors` (the layer contract in
``pyproject.toml`` checks it in ``make test``). It holds crash-safe file replacement
(:mod:`~lumbarssl._core.atomic`), the process-group queries used by the losses and the
trainer (:mod:`~lumbarssl._core.distributed`) and the configuration base class.
"""
