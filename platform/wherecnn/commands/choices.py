"""The choices the commands' options share: the evaluation protocols and the training tracks."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    """Which split is held out: places in the training cities, or whole cities (docs/evaluation.md)."""

    same_area = "same-area"
    cross_area = "cross-area"


class TrainProtocol(StrEnum):
    """Which split training uses: a protocol's, or both protocols' training places at once."""

    same_area = "same-area"
    cross_area = "cross-area"
    both = "both"


class Track(StrEnum):
    """Which pairs: camera-centred tiles, cameras anywhere in grid tiles, or perspective photos."""

    aligned = "aligned"
    offset = "offset"
    photo = "photo"
