"""Preprocessing recipes: the one description of how a network input is built from a slice.

A recipe is a small frozen config that travels with the model: ``lumbarssl prepare`` fixes
part of it (ROI size, padding, the localizer stack's side), the training stage completes it
(input size, intensity statistics) and stores it in the checkpoint's metadata under
:data:`lumbarssl.models.checkpoint.RECIPE_KEY`, and evaluation and ``predict`` rebuild it from
there. Datasets, evaluation and ``predict`` build their inputs *only* through a recipe, so the
tensors a model sees when it is served are bit for bit those it was trained on.

* :class:`RoiRecipe`: the disc ROI of the classifier (paper Sec. 3.1, 4.2): a
  ``roi_size`` crop of the min-max normalised slice, padded with ``pad_value``, stored as
  uint8, scaled to [0, 1], resized to ``input_size`` and standardised with ``mean``/``std``.
* :class:`LocalizerRecipe`: the 2.5D input of the localizer (Sec. 3.2, 4.5): ``slices``
  neighbouring slices, each min-max normalised and resized to ``stack_size`` (the stack the
  cache stores), scaled to [0, 1] and resized once more to ``input_size``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from lumbarssl import paper
from lumbarssl._core.config import ConfigBase
from lumbarssl.data.cache import PreparedCache
from lumbarssl.data.roi import extract_roi, localizer_input
from lumbarssl.errors import ConfigError, DataError, InputError

__all__ = [
    "RECIPE_KINDS",
    "Interpolation",
    "LocalizerRecipe",
    "Recipe",
    "RoiAugmentation",
    "RoiRecipe",
    "recipe_from_metadata",
    "recipe_to_metadata",
]

#: Resampling filters a recipe may name (those of both torchvision and ``F.interpolate``).
Interpolation = Literal["bilinear", "bicubic", "nearest"]
_INTERPOLATIONS: Final = ("bilinear", "bicubic", "nearest")
_V2_MODES: Final = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}
_UINT8_MAX: Final = 255.0


class RoiAugmentation(Protocol):
    """The augmentation settings :meth:`RoiRecipe.train_transform` reads (Sec. 4.2).

    :class:`~lumbarssl.data.datasets.DiscDatasetConfig` is one.
    """

    @property
    def crop_scale(self) -> tuple[float, float]:
        """Area range of the random resized crop."""
        ...

    @property
    def hflip_p(self) -> float:
        """Probability of the horizontal flip."""
        ...

    @property
    def rotation_degrees(self) -> float:
        """Rotation range, +/- degrees."""
        ...

    @property
    def brightness(self) -> float:
        """Brightness jitter, factor range 1 +/- this."""
        ...

    @property
    def contrast(self) -> float:
        """Contrast jitter, factor range 1 +/- this."""
        ...


def _as_tensor(array: np.ndarray | Tensor) -> Tensor:
    if isinstance(array, Tensor):
        return array
    # A read-only array (a memory map of the cache) is copied: torch wants writable memory.
    return torch.from_numpy(array if array.flags.writeable else np.array(array))


def _check_interpolation(value: str, antialias: bool) -> None:
    if value not in _INTERPOLATIONS:
        raise ConfigError(
            f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {value!r}"
        )
    if antialias and value == "nearest":
        raise ConfigError("antialias has no meaning for nearest interpolation; set it False")


def _prepare_setting(cache: PreparedCache, key: str) -> float:
    config = cache.meta.get("config")
    value = config.get(key) if isinstance(config, Mapping) else None
    if not isinstance(value, int | float):
        raise DataError(
            f"{cache.root or 'in-memory cache'}: prepare_meta.json has no number config.{key}; "
            "prepare the cache again with this version of lumbarssl"
        )
    return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoiRecipe(ConfigBase):
    """How a disc ROI becomes a classifier input (paper Sec. 3.1, 4.2).

    Attributes:
        roi_size: Side of the square crop around the disc, in slice pixels (Sec. 4.2: 96).
        pad_value: Value, in normalised units [0, 1], of crop pixels outside the slice
            (Sec. 3.1: constant padding; 0 = the slice's darkest value).
        input_size: Side of the network input the ROI is resized to (Sec. 4.2: 224).
        mean: Intensity mean subtracted after scaling to [0, 1] (Sec. 4.2: dataset
            statistics); ``None`` until the training stage fills in the cache's.
        std: Intensity standard deviation divided by; ``None`` likewise.
        interpolation: Filter of the resize to ``input_size`` (bilinear, our choice).
        antialias: Whether shrinking low-pass filters first (our choice: yes).
    """

    roi_size: int = paper.ROI_SIZE
    pad_value: float = 0.0
    input_size: int = paper.INPUT_SIZE
    mean: float | None = None
    std: float | None = None
    interpolation: Interpolation = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.roi_size < 1 or self.input_size < 1:
            raise ConfigError(
                f"roi_size and input_size must be >= 1, got {self.roi_size}, {self.input_size}"
            )
        if not 0.0 <= self.pad_value <= 1.0:
            raise ConfigError(f"pad_value must be in [0, 1], got {self.pad_value}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError(f"give both mean and std or neither, got {self.mean}, {self.std}")
        if self.std is not None and not self.std > 0.0:
            raise ConfigError(f"std must be > 0, got {self.std}")
        _check_interpolation(self.interpolation, self.antialias)

    @classmethod
    def from_cache(
        cls,
        cache: PreparedCache,
        *,
        input_size: int = paper.INPUT_SIZE,
        mean: float | None = None,
        std: float | None = None,
    ) -> RoiRecipe:
        """The recipe of a prepared cache: its ROI size and padding, and its statistics.

        Args:
            cache: The prepared cache.
            input_size: Side of the network input.
            mean: Intensity mean; the cache's (over every ROI pixel) when ``None``.
            std: Intensity standard deviation; the cache's when ``None``.

        Returns:
            A complete recipe.

        Raises:
            DataError: If the cache's metadata lacks the prepare settings.
        """
        if mean is None or std is None:
            cache_mean, cache_std = cache.roi_stats()
            mean = cache_mean if mean is None else mean
            std = cache_std if std is None else std
        recipe = cls(
            roi_size=int(_prepare_setting(cache, "roi_size")),
            pad_value=_prepare_setting(cache, "pad_value"),
            input_size=input_size,
            mean=float(mean),
            std=float(std),
        )
        recipe.check_cache(cache)
        return recipe

    def check_cache(self, cache: PreparedCache) -> None:
        """Raise unless ``cache`` holds ROIs cut the way this recipe cuts them.

        Args:
            cache: The prepared cache.

        Raises:
            DataError: Naming the setting that differs and how to fix it.
        """
        side = int(cache.rois.shape[-1])
        pad = _prepare_setting(cache, "pad_value")
        if side != self.roi_size or pad != self.pad_value:
            raise DataError(
                f"{cache.root or 'in-memory cache'}: holds {side}-px ROIs padded with {pad}, "
                f"the recipe wants {self.roi_size}-px ROIs padded with {self.pad_value}; "
                f"prepare the cache again with roi_size={self.roi_size} and "
                f"pad_value={self.pad_value} (PrepareConfig), or build the recipe with "
                "RoiRecipe.from_cache"
            )

    def _stats(self) -> tuple[float, float]:
        if self.mean is None or self.std is None:
            raise ConfigError(
                "RoiRecipe has no intensity statistics (mean/std); build it with "
                "RoiRecipe.from_cache(cache) or pass mean= and std="
            )
        return self.mean, self.std

    def extract(
        self,
        image: np.ndarray,
        x: float,
        y: float,
        *,
        value_range: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """Cut the ROI around ``(x, y)`` exactly as ``lumbarssl prepare`` does.

        Args:
            image: The slice, real-valued (H, W).
            x: Column of the disc centre in pixels.
            y: Row of the disc centre in pixels.
            value_range: The slice's ``(min, max)`` if known.

        Returns:
            uint8 (roi_size, roi_size).
        """
        return extract_roi(
            image, x, y, self.roi_size, pad_value=self.pad_value, value_range=value_range
        )

    @staticmethod
    def to_tensor(rois: np.ndarray | Tensor) -> Tensor:
        """uint8 ROIs (..., H, W) as float32 in [0, 1], a channel axis added: (..., 1, H, W)."""
        return _as_tensor(rois).unsqueeze(-3).float() / _UINT8_MAX

    def _normalize(self) -> v2.Normalize:
        mean, std = self._stats()
        return v2.Normalize(mean=[mean], std=[std])

    def eval_transform(self) -> v2.Transform:
        """The deterministic transform: resize to ``input_size``, then standardise.

        Returns:
            A transform of float (..., 1, H, W) in [0, 1] to float (..., 1, S, S).
        """
        size = self.input_size
        return v2.Compose(
            [
                v2.Resize(
                    (size, size),
                    interpolation=_V2_MODES[self.interpolation],
                    antialias=self.antialias,
                ),
                self._normalize(),
            ]
        )

    def train_transform(self, augment: RoiAugmentation) -> v2.Transform:
        """A random view (Sec. 4.2): rotation, jitter, flip, random resized crop, standardise.

        Rotation, jitter and flip run at ROI resolution, before the crop upsamples: the same
        kinds of views as the paper's order, several times cheaper than at 224 x 224.

        Args:
            augment: The augmentation settings (e.g. a
                :class:`~lumbarssl.data.datasets.DiscDatasetConfig`).

        Returns:
            A transform of float (1, H, W) in [0, 1] to float (1, S, S), drawing from torch's
            global generator.
        """
        return v2.Compose(
            [
                v2.RandomRotation(
                    augment.rotation_degrees, interpolation=v2.InterpolationMode.BILINEAR
                ),
                v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast),
                v2.RandomHorizontalFlip(p=augment.hflip_p),
                v2.RandomResizedCrop(
                    self.input_size,
                    scale=augment.crop_scale,
                    interpolation=_V2_MODES[self.interpolation],
                    antialias=self.antialias,
                ),
                self._normalize(),
            ]
        )

    def augmented_view(
        self,
        roi: Tensor,
        *,
        angle: float,
        flip: bool,
        box: tuple[int, int, int, int],
        brightness: float,
        contrast: float,
        contrast_first: bool,
    ) -> Tensor:
        """One random view with given parameters: :meth:`train_transform`'s steps, as drawn.

        The same torchvision kernels, in the same order, as :meth:`train_transform` applies
        after drawing its parameters; here the caller draws them (e.g. keyed by sample and
        epoch, :func:`~lumbarssl.data.batch_augment.draw_augment_params`).

        Args:
            roi: float32 (1, H, W) in [0, 1].
            angle: Rotation in degrees, counter-clockwise, about the ROI centre.
            flip: Whether to flip horizontally (after the rotation and the jitter).
            box: Crop ``(top, left, height, width)`` in ROI pixels.
            brightness: Brightness factor (1 = unchanged).
            contrast: Contrast factor (1 = unchanged).
            contrast_first: Apply the contrast jitter before the brightness jitter.

        Returns:
            float32 (1, S, S), normalised.
        """
        view = v2.functional.rotate(
            roi, angle, interpolation=v2.InterpolationMode.BILINEAR, expand=False, fill=0
        )
        if contrast_first:
            view = v2.functional.adjust_contrast(view, contrast)
            view = v2.functional.adjust_brightness(view, brightness)
        else:
            view = v2.functional.adjust_brightness(view, brightness)
            view = v2.functional.adjust_contrast(view, contrast)
        if flip:
            view = v2.functional.horizontal_flip(view)
        top, left, height, width = box
        view = v2.functional.resized_crop(
            view,
            top,
            left,
            height,
            width,
            size=[self.input_size, self.input_size],
            interpolation=_V2_MODES[self.interpolation],
            antialias=self.antialias,
        )
        out: Tensor = self._normalize()(view)
        return out

    def network_input(self, rois: np.ndarray | Tensor) -> Tensor:
        """uint8 ROIs (..., roi_size, roi_size) as the classifier's input (..., 1, S, S)."""
        out: Tensor = self.eval_transform()(self.to_tensor(rois))
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalizerRecipe(ConfigBase):
    """How the 2.5D localizer input is built from a series (paper Sec. 3.2, 4.5).

    The input is built in two resampling steps, at training and at serving time alike: the
    slices are resized to ``stack_size`` and stored as uint8 (what the cache holds; PIL
    bilinear with antialiasing, see :func:`~lumbarssl.data.roi.localizer_channel`), then
    the [0, 1] stack is resized to ``input_size`` with ``F.interpolate``. One cache thus
    serves every input size, and ``predict`` rebuilds exactly the cached stack.

    Attributes:
        slices: Neighbouring slices stacked as channels (Sec. 4.5: three).
        stack_size: Side of the stored stack (Sec. 4.5: 256; ``prepare --localizer-size``).
        input_size: Side of the network input (Sec. 4.5: 256).
        normalization: Intensity mapping of each slice; ``"slice_minmax"``, min-max over the
            slice (the only one).
        interpolation: Filter of the resize from ``stack_size`` to ``input_size``.
        antialias: Whether shrinking low-pass filters first.
    """

    slices: int = paper.LOCALIZER_SLICES
    stack_size: int = paper.LOCALIZER_SIZE
    input_size: int = paper.LOCALIZER_SIZE
    normalization: Literal["slice_minmax"] = "slice_minmax"
    interpolation: Interpolation = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.slices < 1 or self.slices % 2 == 0:
            raise ConfigError(f"slices must be an odd number >= 1, got {self.slices}")
        if self.stack_size < 1 or self.input_size < 1:
            raise ConfigError(
                f"stack_size and input_size must be >= 1, got {self.stack_size}, {self.input_size}"
            )
        if self.normalization != "slice_minmax":
            raise ConfigError(f"normalization must be 'slice_minmax', got {self.normalization!r}")
        _check_interpolation(self.interpolation, self.antialias)

    @classmethod
    def from_cache(cls, cache: PreparedCache, *, input_size: int | None = None) -> LocalizerRecipe:
        """The recipe of a prepared cache's stacks, served at ``input_size``.

        Args:
            cache: The prepared cache.
            input_size: Side of the network input; the stack's own when ``None``.

        Returns:
            The recipe.

        Raises:
            DataError: If the cache's metadata lacks the prepare settings.
        """
        stack_size = int(_prepare_setting(cache, "localizer_size"))
        recipe = cls(
            slices=int(cache.localizer_images.shape[1]),
            stack_size=stack_size,
            input_size=stack_size if input_size is None else input_size,
        )
        recipe.check_cache(cache)
        return recipe

    def check_cache(self, cache: PreparedCache) -> None:
        """Raise unless ``cache`` holds stacks built the way this recipe builds them.

        Args:
            cache: The prepared cache.

        Raises:
            DataError: Naming the setting that differs and how to fix it.
        """
        shape = tuple(int(n) for n in cache.localizer_images.shape[1:])
        want = (self.slices, self.stack_size, self.stack_size)
        if shape != want:
            raise DataError(
                f"{cache.root or 'in-memory cache'}: holds localizer stacks of shape {shape}, "
                f"the recipe wants {want}; prepare again with --localizer-size "
                f"{self.stack_size}"
            )

    def stack(self, slices: Sequence[np.ndarray], center: int) -> np.ndarray:
        """Build the stored stack from a series, exactly as ``lumbarssl prepare`` does.

        Args:
            slices: The whole series in spatial order, each (H_i, W_i).
            center: Index of the slice the centres refer to.

        Returns:
            uint8 (slices, stack_size, stack_size).
        """
        return localizer_input(slices, center, self.stack_size, channels=self.slices)

    def network_input(self, stacks: np.ndarray | Tensor) -> Tensor:
        """Stored uint8 stacks (..., slices, L, L) as the localizer's input (..., slices, S, S).

        Scales to [0, 1] and resizes to ``input_size`` (identity when the sides agree). One
        stack or a batch gives the same values per stack.

        Args:
            stacks: uint8 stacks, (slices, L, L) or (B, slices, L, L).

        Returns:
            float32 of the same leading shape, sides ``input_size``.
        """
        images = _as_tensor(stacks).float() / _UINT8_MAX
        size = self.input_size
        if images.shape[-2:] == (size, size):
            return images
        batch = images.reshape(-1, *images.shape[-3:])
        antialias = self.antialias and self.interpolation in ("bilinear", "bicubic")
        resized = F.interpolate(
            batch, size=(size, size), mode=self.interpolation, antialias=antialias
        )
        return resized.reshape(*images.shape[:-2], size, size)


#: A recipe of either kind.
Recipe = RoiRecipe | LocalizerRecipe
#: Kind name stored in checkpoint metadata -> recipe class.
RECIPE_KINDS: Final[dict[str, type[RoiRecipe] | type[LocalizerRecipe]]] = {
    "roi": RoiRecipe,
    "localizer": LocalizerRecipe,
}


_R = TypeVar("_R", RoiRecipe, LocalizerRecipe)


def recipe_to_metadata(recipe: Recipe) -> dict[str, Any]:
    """The JSON form a checkpoint stores under :data:`~lumbarssl.models.checkpoint.RECIPE_KEY`.

    Args:
        recipe: A complete recipe (a :class:`RoiRecipe` must have its statistics).

    Returns:
        ``{"kind": "roi" | "localizer", "config": recipe.to_dict()}``.

    Raises:
        ConfigError: If a :class:`RoiRecipe` lacks ``mean``/``std``.
    """
    if isinstance(recipe, RoiRecipe):
        recipe._stats()  # a stored recipe must be complete
        kind = "roi"
    else:
        kind = "localizer"
    return {"kind": kind, "config": recipe.to_dict()}


def recipe_from_metadata(stored: object, expected: type[_R], source: str) -> _R:
    """Rebuild a recipe from what a checkpoint stores under its recipe key.

    Args:
        stored: ``metadata[RECIPE_KEY]`` of a checkpoint, ``None`` if absent.
        expected: :class:`RoiRecipe` or :class:`LocalizerRecipe`.
        source: The checkpoint's path, for messages.

    Returns:
        An instance of ``expected``.

    Raises:
        InputError: If there is no recipe (a checkpoint written before recipes existed: the
            message says how to convert it) or one of the other kind.
    """
    kind = "roi" if expected is RoiRecipe else "localizer"
    if stored is None:
        raise InputError(
            f"{source}: checkpoint has no preprocessing recipe (older format); convert it "
            f"once with lumbarssl.pipeline.convert_checkpoint({source!r}, "
            f"legacy_recipe({source!r}, CACHE_DIR)) or with a {expected.__name__}(...) of "
            "the settings it was trained with"
        )
    if not isinstance(stored, Mapping) or stored.get("kind") not in RECIPE_KINDS:
        raise InputError(f"{source}: the stored recipe is malformed: {stored!r}")
    if stored["kind"] != kind:
        raise InputError(
            f"{source}: holds a {stored['kind']!r} recipe, expected a {kind!r} one "
            "(a localizer checkpoint given for a classifier, or the other way round?)"
        )
    config = stored.get("config")
    if not isinstance(config, Mapping):
        raise InputError(f"{source}: the stored recipe has no 'config' object: {stored!r}")
    try:
        return expected.from_dict(config)
    except ConfigError as err:
        raise InputError(f"{source}: the stored recipe is invalid: {err}") from err
