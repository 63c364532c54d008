"""The paper's numbers live in lumbarssl.paper alone; everything else refers to them."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lumbarssl
from lumbarssl import paper
from lumbarssl._core.data_source import DATA_SOURCES
from lumbarssl.data import roi
from lumbarssl.data.prepare import PrepareConfig
from lumbarssl.losses import focal, ntxent
from lumbarssl.models import Localizer2p5D, classifier
from lumbarssl.pipeline.config import StageConfig
from lumbarssl.pipeline.finetune import FinetuneConfig
from lumbarssl.pipeline.localize import LocalizerConfig
from lumbarssl.pipeline.pretrain import PretrainConfig

PACKAGE = Path(lumbarssl.__file__).parent

# (config, field, paper constant): every default the paper fixes.
STAGE_DEFAULTS: list[tuple[type[Any], str, object]] = [
    (StageConfig, "test_size", paper.TEST_SIZE),
    (PretrainConfig, "epochs", paper.PRETRAIN_EPOCHS),
    (PretrainConfig, "views", paper.N_VIEWS),
    (PretrainConfig, "temperature", paper.TEMPERATURE),
    (PretrainConfig, "input_size", paper.INPUT_SIZE),
    (FinetuneConfig, "epochs", paper.FINETUNE_EPOCHS),
    (FinetuneConfig, "batch_size", paper.FINETUNE_BATCH_SIZE),
    (FinetuneConfig, "backbone_lr", paper.BACKBONE_LR),
    (FinetuneConfig, "head_lr", paper.HEAD_LR),
    (FinetuneConfig, "gamma", paper.FOCAL_GAMMA),
    (FinetuneConfig, "alpha", paper.FOCAL_ALPHA),
    (FinetuneConfig, "plateau_patience", paper.FINETUNE_PLATEAU_PATIENCE),
    (FinetuneConfig, "plateau_factor", paper.FINETUNE_PLATEAU_FACTOR),
    (FinetuneConfig, "input_size", paper.INPUT_SIZE),
    (LocalizerConfig, "epochs", paper.LOCALIZER_EPOCHS),
    (LocalizerConfig, "batch_size", paper.LOCALIZER_BATCH_SIZE),
    (LocalizerConfig, "lr", paper.LOCALIZER_LR),
    (LocalizerConfig, "weight_decay", paper.LOCALIZER_WEIGHT_DECAY),
    (LocalizerConfig, "plateau_patience", paper.LOCALIZER_PLATEAU_PATIENCE),
    (LocalizerConfig, "plateau_factor", paper.LOCALIZER_PLATEAU_FACTOR),
    (LocalizerConfig, "input_size", paper.LOCALIZER_SIZE),
    (PrepareConfig, "roi_size", paper.ROI_SIZE),
    (PrepareConfig, "localizer_size", paper.LOCALIZER_SIZE),
]


@pytest.mark.parametrize(("cls", "name", "constant"), STAGE_DEFAULTS)
def test_config_defaults_are_the_paper_constants(
    cls: type[Any], name: str, constant: object
) -> None:
    default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    # The same object, not an equal literal typed a second time.
    assert default is constant


def test_public_aliases_are_the_paper_constants() -> None:
    assert ntxent.PAPER_TEMPERATURE is paper.TEMPERATURE
    assert focal.PAPER_ALPHA is paper.FOCAL_ALPHA
    assert focal.PAPER_GAMMA is paper.FOCAL_GAMMA
    assert classifier.BACKBONE_LR is paper.BACKBONE_LR
    assert classifier.HEAD_LR is paper.HEAD_LR
    assert roi.ROI_SIZE is paper.ROI_SIZE
    assert roi.LOCALIZER_SIZE is paper.LOCALIZER_SIZE


def test_model_and_loss_defaults_are_the_paper_constants() -> None:
    localizer = inspect.signature(Localizer2p5D).parameters
    assert localizer["hidden"].default is paper.LOCALIZER_HIDDEN
    assert localizer["dropout"].default is paper.LOCALIZER_DROPOUT
    assert localizer["level_dim"].default is paper.LOCALIZER_LEVEL_DIM
    assert localizer["in_chans"].default is paper.LOCALIZER_SLICES
    assert inspect.signature(ntxent.MultiPositiveNTXent).parameters["temperature"].default == (
        paper.TEMPERATURE
    )
    loss = inspect.signature(focal.WeightedFocalLoss).parameters
    assert loss["alpha"].default is paper.FOCAL_ALPHA
    assert loss["gamma"].default is paper.FOCAL_GAMMA


def test_paper_values_match_the_text() -> None:
    # A hand-copied check against the paper (Sec. 4.1-4.5), so a typo in paper.py fails too.
    assert (paper.ROI_SIZE, paper.INPUT_SIZE, paper.LOCALIZER_SIZE) == (96, 224, 256)
    assert (paper.TEMPERATURE, paper.N_VIEWS, paper.PRETRAIN_EPOCHS) == (0.1, 3, 60)
    assert (paper.BACKBONE_LR, paper.HEAD_LR) == (5e-5, 5e-4)
    assert (paper.FOCAL_GAMMA, paper.FOCAL_ALPHA) == (2.0, (0.8, 4.0, 5.0))
    assert (paper.LOCALIZER_LR, paper.LOCALIZER_WEIGHT_DECAY) == (1e-4, 0.01)
    assert paper.TEST_SIZE == 0.2


# --------------------------------------------------------------------------- source scan

# Setting names whose default the paper fixes, and the paper constants such a default may be.
PAPER_SETTINGS: dict[str, tuple[object, ...]] = {
    "temperature": (paper.TEMPERATURE,),
    "views": (paper.N_VIEWS,),
    "n_views": (paper.N_VIEWS,),
    "backbone_lr": (paper.BACKBONE_LR,),
    "head_lr": (paper.HEAD_LR,),
    "gamma": (paper.FOCAL_GAMMA,),
    "alpha": (paper.FOCAL_ALPHA,),
    "input_size": (paper.INPUT_SIZE, paper.LOCALIZER_SIZE),
    "roi_size": (paper.ROI_SIZE,),
    "localizer_size": (paper.LOCALIZER_SIZE,),
    "localizer_input": (paper.LOCALIZER_SIZE,),
    "size": (paper.ROI_SIZE, paper.LOCALIZER_SIZE),
    "hidden": (paper.LOCALIZER_HIDDEN,),
    "dropout": (paper.LOCALIZER_DROPOUT,),
    "level_dim": (paper.LOCALIZER_LEVEL_DIM,),
    "in_chans": (paper.LOCALIZER_SLICES,),
    "test_size": (paper.TEST_SIZE,),
    "crop_scale": (paper.CROP_SCALE,),
    "rotation_degrees": (paper.ROTATION_DEGREES,),
    "epochs": (paper.PRETRAIN_EPOCHS, paper.FINETUNE_EPOCHS, paper.LOCALIZER_EPOCHS),
    "batch_size": (paper.FINETUNE_BATCH_SIZE, paper.LOCALIZER_BATCH_SIZE),
    "lr": (paper.LOCALIZER_LR, paper.BACKBONE_LR, paper.HEAD_LR),
    "weight_decay": (paper.LOCALIZER_WEIGHT_DECAY,),
    "plateau_patience": (paper.FINETUNE_PLATEAU_PATIENCE, paper.LOCALIZER_PLATEAU_PATIENCE),
    "plateau_factor": (paper.FINETUNE_PLATEAU_FACTOR, paper.LOCALIZER_PLATEAU_FACTOR),
}
PAPER_NAMES = {name for name in vars(paper) if name.isupper()}

# (file relative to the package, setting): literals still declared elsewhere, with the reason
# (none left).
ALLOWED: dict[tuple[str, str], str] = {}


def _literal(node: ast.expr | None) -> object:
    """The value of a number or a tuple of numbers, else ``None``."""
    try:
        value = ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) or (
        isinstance(value, tuple) and value and all(isinstance(v, int | float) for v in value)
    ):
        return value
    return None


def _field_default(node: ast.expr | None) -> ast.expr | None:
    # `param(default, help)` or `dataclasses.field(default=...)` declare a field's default.
    if isinstance(node, ast.Call):
        for keyword in node.keywords:
            if keyword.arg == "default":
                return keyword.value
        return node.args[0] if node.args else None
    return node


def _declared_defaults(tree: ast.AST) -> Iterator[tuple[str, int, ast.expr | None]]:
    """``(name, line, default)`` of every parameter default, field and constant."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            positional = [*node.args.posonlyargs, *node.args.args]
            for arg, default in zip(
                positional[len(positional) - len(node.args.defaults) :],
                node.args.defaults,
                strict=True,
            ):
                yield arg.arg, default.lineno, default
            for arg, kw_default in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True):
                if kw_default is not None:
                    yield arg.arg, kw_default.lineno, kw_default
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id, node.lineno, _field_default(node.value)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield target.id, node.lineno, node.value


def _redeclared_paper_numbers(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative == "paper.py":
            continue
        for name, line, node in _declared_defaults(ast.parse(path.read_text(encoding="utf-8"))):
            value = _literal(node)
            if value is None or (relative, name) in ALLOWED:
                continue
            if name in PAPER_NAMES or value in PAPER_SETTINGS.get(name, ()):
                found.append(f"{relative}:{line}: {name} = {value!r}")
    return sorted(found)


def test_no_paper_number_is_typed_twice() -> None:
    found = _redeclared_paper_numbers()
    assert not found, (
        "paper numbers re-declared as literals; take them from lumbarssl.paper: " + str(found)
    )


def test_the_scan_catches_a_retyped_default(tmp_path: Path) -> None:
    # The scan must fail on exactly the mistake it guards against.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "paper.py").write_text("TEMPERATURE = 0.1\n")
    (package / "stage.py").write_text(
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class C:\n"
        "    temperature: float = param(0.1, 'tau')\n"
        "    val_size: float = 0.1\n"
        "def f(head_lr=5e-4, other=5e-4):\n"
        "    pass\n"
        "ROI_SIZE = 96\n"
    )
    assert _redeclared_paper_numbers(package) == [
        "stage.py:4: temperature = 0.1",
        "stage.py:6: head_lr = 0.0005",
        "stage.py:8: ROI_SIZE = 96",
    ]


def test_data_sources_are_declared_once() -> None:
    declared = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                items = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if set(DATA_SOURCES) <= items:
                    declared.append(f"{relative}:{node.lineno}")
    assert len(declared) == 1, declared
    assert declared[0].startswith("_core/data_source.py:"), declared
