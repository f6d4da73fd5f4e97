"""The typed schema of a model config: the architecture, its loss, the training recipe with its per-track
sections, and each setting's default, defined here once.

A registered config (``models/configs/*.json``), a checkpoint's stored config and ``--set`` overrides all
pass through `validate_config`: unknown keys are refused with their path (``train.augment_scal``), values are
checked, and every setting the file leaves out gets its default, so code reads ``config["ground_layout"]``
and never repeats a default. The architecture's fields depend on its ``family`` (``compact``, ``alexnet``,
``torchvision``).

A track section (``offset``, ``photo``) may set any of `TRACK_RECIPE_KEYS` over the ``train`` section for a
model trained on that track; a key it does not set is absent from it (training then reads ``train``'s), so
an explicit ``null`` (e.g. ``dual-cpu``'s ``offset.augment_scale``: no zoom) differs from "not set". Its
``model`` holds architecture settings that replace the top-level ones on that track, validated as such.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
    model_validator,
)

from wherecnn.data.augment import DEFAULT_FLIP, DEFAULT_ROTATION
from wherecnn.data.ground import CANVAS_VFOV_DEG, DEFAULT_GROUND_LAYOUT
from wherecnn.data.normalise import IMAGENET_MEAN, IMAGENET_STD
from wherecnn.similarity import HUB_NEIGHBOURS

Pair = tuple[int, int]
Rgb = tuple[float, float, float]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Loss(_Section):
    """The training loss (`train.losses.make_loss`) and the model's temperature."""

    name: Literal["infonce", "contrastive", "triplet"] = "infonce"
    temperature: float = Field(0.07, gt=0)
    learn_temperature: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # infonce
    margin: float = 0.5  # contrastive
    negatives_per_positive: int = Field(4, ge=1)  # contrastive
    alpha: float = 10.0  # triplet (soft margin)


class Tta(_Section):
    """Test-time views (`TwoBranchModel.test_views`): as is and, with ``flip``, mirrored; ``phases`` turns."""

    flip: bool = False
    phases: int = Field(1, ge=1)


class HubCorrection(_Section):
    """Score a gallery view minus ``weight`` times its mean similarity to its ``neighbours`` nearest tiles."""

    weight: float = 0.0
    neighbours: int = Field(HUB_NEIGHBOURS, ge=1)


class MixStyle(_Section):
    """MixStyle (feature statistics mixed across the batch) after these trunk blocks of a compact model."""

    p: float = Field(0.5, ge=0, le=1)
    alpha: float = Field(0.1, gt=0)
    after: list[int] = []


class Recipe(_Section):
    """The ``train`` section: how a model is trained (`train.loop`)."""

    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    schedule: Literal["cosine"] = "cosine"  # with ``warmup_steps`` of linear warm-up
    warmup_steps: int = Field(0, ge=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    ema: float | None = Field(None, gt=0, lt=1)  # publish a moving average of the weights, this decay a step
    # the pair's augmentation (`data.augment.augment_pair`): view-consistent but for the compass error
    augment_rotation: Literal["none", "quarter", "any"] = DEFAULT_ROTATION  # type: ignore[assignment]
    augment_flip: bool = DEFAULT_FLIP
    augment_color: float = Field(0.0, ge=0)
    augment_shift: float = Field(0.0, ge=0, lt=0.5)
    augment_scale: tuple[float, float] | None = None  # zoom: lo..hi times a tile's ground side
    augment_heading: float = Field(0.0, ge=0, le=180)  # compass error: the ground view alone turned +/- deg
    # a compass error of heading_start at first, moving to augment_heading over the first heading_anneal
    heading_start: float | None = Field(None, ge=0, le=180)
    heading_anneal: float = Field(0.5, ge=0, le=1)
    # infonce, models with bearing columns: each ground view also meets every tile of the batch at each wrong
    # whole-column heading (as a search without a heading compares it), the positive tile's included
    turned_negatives: bool = False
    # hard negatives: neighbour groups in a batch, Sample4Geo-style mining every few epochs
    hard_fraction: float = Field(0.5, ge=0, le=1)
    neighbours_per_group: int = Field(8, ge=1)
    mine_every: int = Field(0, ge=0)
    mine_k: int = Field(32, ge=1)
    # new places rendered every epoch when the world is synthetic (`data.synthetic.fresh`)
    fresh_places: int = Field(0, ge=0)
    fresh_epochs: int = Field(3, ge=1)
    fresh_worlds: int | None = Field(None, ge=1)  # None: as many as the training cities
    fresh_area_share: float | None = Field(None, ge=0, le=1)  # None: a third in the training area
    style_spread: float | None = Field(None, gt=0)


TRACK_SECTIONS = ("offset", "photo")  # the tracks with their own section (aligned trains on ``train``'s)


class _Track(_Section):
    """A track section: the recipe settings it sets over ``train``'s (`TRACK_RECIPE_KEYS`), its shift
    curriculum and its model settings."""

    # over ``train``'s, on this track (absent when not set: see the module's docstring)
    lr: float | None = Field(None, gt=0)
    augment_rotation: Literal["none", "quarter", "any"] | None = None
    augment_flip: bool | None = None
    augment_color: float | None = Field(None, ge=0)
    augment_shift: float | None = Field(None, ge=0, lt=0.5)
    augment_scale: tuple[float, float] | None = None
    augment_heading: float | None = Field(None, ge=0, le=180)
    heading_start: float | None = Field(None, ge=0, le=180)
    heading_anneal: float | None = Field(None, ge=0, le=1)
    turned_negatives: bool | None = None
    fresh_places: int | None = Field(None, ge=0)
    fresh_epochs: int | None = Field(None, ge=1)
    fresh_area_share: float | None = Field(None, ge=0, le=1)
    # camera-centred tiles shifted by shift_start at first, moving to augment_shift over shift_anneal
    shift_start: float | None = Field(None, ge=0, lt=0.5)
    shift_anneal: float = Field(0.5, ge=0, le=1)
    model: dict[str, Any] = {}  # architecture settings for a model trained on this track

    @model_serializer(mode="wrap")
    def _only_the_recipe_keys_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k not in TRACK_RECIPE_KEYS or k in self.model_fields_set}


# the recipe settings a track section may set over ``train`` for a model trained on that track: the fields
# the two share
TRACK_RECIPE_KEYS = tuple(key for key in _Track.model_fields if key in Recipe.model_fields)


class Offset(_Track):
    """The ``offset`` track: cameras anywhere in a tile, served against grid tiles."""

    # "centred": train on the same panoramas' camera-centred tiles; "track": on the offset pairs
    pairs: Literal["centred", "track"] = "track"
    gallery_centres: int = Field(1, ge=1)  # evaluate a grid tile from K x K centres over its cell
    gallery_scales: list[float] | None = None  # those views at these ground scales as well
    view_pool: int = Field(1, ge=1)  # a tile scores as the mean of its P best views
    # this share of the camera-centred panoramas shown as perspective photos instead, each cut at a random
    # heading with a field of view drawn from photo_fovs (degrees): one model for panoramas and photos
    photo_share: float = Field(0.0, ge=0, le=1)
    photo_fovs: tuple[float, float] = (60.0, 120.0)

    @model_validator(mode="after")
    def _fovs(self) -> Offset:
        lo, hi = self.photo_fovs
        if not 0 < lo <= hi <= 360:
            raise ValueError(f"photo_fovs must be 0 < lo <= hi <= 360, got {list(self.photo_fovs)}")
        return self


class Photo(_Track):
    """The ``photo`` track: perspective photos."""

    # "panorama": photos cut from the training panoramas at a random heading each time; "track": the photos
    pairs: Literal["panorama", "track"] = "track"
    fov_deg: float = Field(90.0, gt=0, le=360)
    fov_start_deg: float | None = Field(None, gt=0, le=360)  # curriculum: sectors this wide at first
    fov_anneal: float = Field(0.5, ge=0, le=1)


class _Architecture(_Section):
    """What every model config holds: the two branches' inputs and outputs, and the sections above."""

    name: str
    description: str = ""
    embed_dim: int = Field(ge=1)
    ground_size: Pair
    aerial_size: Pair
    mean: Rgb = IMAGENET_MEAN
    std: Rgb = IMAGENET_STD
    # "canvas": a photo on a 360-degree canvas at its heading; "cylinder": reprojected onto bearings and
    # elevations (the canvas spanning canvas_vfov_deg); "resize": the heading ignored
    ground_layout: Literal["canvas", "cylinder", "resize"] = DEFAULT_GROUND_LAYOUT  # type: ignore[assignment]
    canvas_vfov_deg: float = Field(CANVAS_VFOV_DEG, gt=0, lt=180)
    shared: bool = False  # one trunk for both views
    polar: bool = False  # SAFA-style polar transform of the aerial tile
    weights: str | None = None  # a local state-dict file
    tta: Tta = Tta()
    hub_correction: HubCorrection | None = None
    loss: Loss = Loss()
    train: Recipe = Recipe()
    offset: Offset = Offset()
    photo: Photo = Photo()


class CompactConfig(_Architecture):
    """`models.compact`: a small CNN per branch sized for CPUs."""

    family: Literal["compact"]
    channels: list[int]
    strides: list[int]
    pools: list[bool]
    head_channels: int = Field(32, ge=1)
    head: Literal["spatial", "azimuth"] = "spatial"
    mixstyle: MixStyle | None = None


class AlexNetConfig(_Architecture):
    """`models.alexnet`: the paper's Where-CNN."""

    family: Literal["alexnet"]
    hidden: int = Field(1024, ge=1)
    batch_norm: bool = False
    weights_enum: str | None = None


class TorchvisionConfig(_Architecture):
    """`models.backbones`: a torchvision backbone per branch."""

    family: Literal["torchvision"]
    backbone: str
    polar_size: Pair | None = None  # the polar transform's size (else ground_size)
    weights_enum: str | None = None  # a torchvision weights enum, only if already cached


ModelConfig = Annotated[CompactConfig | AlexNetConfig | TorchvisionConfig, Field(discriminator="family")]
FAMILIES: dict[str, type[_Architecture]] = {
    "compact": CompactConfig,
    "alexnet": AlexNetConfig,
    "torchvision": TorchvisionConfig,
}
_ADAPTER: TypeAdapter[CompactConfig | AlexNetConfig | TorchvisionConfig] = TypeAdapter(ModelConfig)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` checked against the schema, with every default filled in (JSON-like: lists, not tuples).
    A track section's ``model`` settings are checked as the architecture settings they replace. ValueError
    naming each bad key by its path (and the known keys, for an unknown one)."""
    name = config.get("name")
    try:
        parsed = _ADAPTER.validate_python(config)
    except ValidationError as exc:
        raise ValueError(f"model config {name!r}: {_describe(exc, config)}") from None
    for track in TRACK_SECTIONS:
        section = getattr(parsed, track).model
        bad = sorted({"family", "train", "loss", *TRACK_SECTIONS} & set(section))
        if bad:
            raise ValueError(f"model config {name!r}: {track}.model cannot set {', '.join(bad)}")
        if section:
            try:
                _ADAPTER.validate_python({**parsed.model_dump(), **section})
            except ValidationError as exc:
                raise ValueError(
                    f"model config {name!r}: {_describe(exc, config, f'{track}.model.')}"
                ) from None
    return parsed.model_dump(mode="json")


def _describe(exc: ValidationError, config: dict[str, Any], prefix: str = "") -> str:
    """The errors, each by the key's dotted path (without pydantic's union tag)."""
    lines, unknown = [], False
    for err in exc.errors():
        loc = err["loc"][1:] if err["loc"] and err["loc"][0] in FAMILIES else err["loc"]
        path = prefix + ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {path}")
            unknown = True
        else:
            lines.append(f"{path or 'family'}: {err['msg']}")
    family = config.get("family")
    if unknown and family in FAMILIES:
        lines.append(f"known: {', '.join(known_keys(str(family)))}")
    return "; ".join(lines)


def known_keys(family: str) -> list[str]:
    """Every setting a config of ``family`` may hold, dotted (``train.lr``, ``offset.shift_start``)."""
    keys = []
    for name, field in FAMILIES[family].model_fields.items():
        args = getattr(field.annotation, "__args__", None) or (field.annotation,)
        section = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        keys.extend([f"{name}.{k}" for k in section.model_fields] if section else [name])
    return keys
