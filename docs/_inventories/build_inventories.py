"""Write the small offline intersphinx inventories used by ``docs/conf.py``.

The documentation is built on machines without internet access, so the inventories that
intersphinx would normally download are generated here, listing the external names our
docstrings refer to, with their real documentation addresses. Run after adding a new
external reference::

    python docs/_inventories/build_inventories.py
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (role, path relative to the project's documentation root)
INVENTORIES: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
    "torch": (
        "PyTorch",
        "stable",
        {
            "torch.Tensor": ("py:class", "tensors.html#torch.Tensor"),
            "torch.nn.Module": ("py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
            "torch.dtype": ("py:class", "tensor_attributes.html#torch.dtype"),
            "torch.device": ("py:class", "tensor_attributes.html#torch.device"),
            "torch.Generator": ("py:class", "generated/torch.Generator.html#torch.Generator"),
            "torch.nn.functional.cross_entropy": (
                "py:function",
                "generated/torch.nn.functional.cross_entropy.html"
                "#torch.nn.functional.cross_entropy",
            ),
            "torch.optim.Optimizer": ("py:class", "optim.html#torch.optim.Optimizer"),
            "torch.utils.data.Dataset": ("py:class", "data.html#torch.utils.data.Dataset"),
            "torch.utils.data.DataLoader": ("py:class", "data.html#torch.utils.data.DataLoader"),
            "torch.distributed": ("py:module", "distributed.html#module-torch.distributed"),
        },
    ),
    "numpy": (
        "NumPy",
        "stable",
        {
            "numpy.ndarray": ("py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
            "numpy.memmap": ("py:class", "reference/generated/numpy.memmap.html#numpy.memmap"),
            "numpy.random.Generator": (
                "py:class",
                "reference/random/generator.html#numpy.random.Generator",
            ),
            "numpy.dtype": ("py:class", "reference/generated/numpy.dtype.html#numpy.dtype"),
        },
    ),
    "python": (
        "Python",
        "3",
        {
            "pathlib.Path": ("py:class", "library/pathlib.html#pathlib.Path"),
            "argparse.ArgumentParser": (
                "py:class",
                "library/argparse.html#argparse.ArgumentParser",
            ),
            "argparse.Namespace": ("py:class", "library/argparse.html#argparse.Namespace"),
            "os.PathLike": ("py:class", "library/os.html#os.PathLike"),
            "typing.Any": ("py:data", "library/typing.html#typing.Any"),
            "collections.abc.Sequence": (
                "py:class",
                "library/collections.abc.html#collections.abc.Sequence",
            ),
            "collections.abc.Iterator": (
                "py:class",
                "library/collections.abc.html#collections.abc.Iterator",
            ),
            "collections.abc.Mapping": (
                "py:class",
                "library/collections.abc.html#collections.abc.Mapping",
            ),
        },
    ),
}


def write_inventory(
    path: Path, project: str, version: str, items: dict[str, tuple[str, str]]
) -> None:
    """Write one Sphinx ``objects.inv`` (format version 2)."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    body = "".join(
        f"{name} {role} 1 {uri} -\n" for name, (role, uri) in sorted(items.items())
    ).encode()
    path.write_bytes(header + zlib.compress(body, 9))


def main() -> None:
    """Write every inventory next to this script."""
    for key, (project, version, items) in INVENTORIES.items():
        write_inventory(HERE / f"{key}.inv", project, version, items)


if __name__ == "__main__":
    main()
