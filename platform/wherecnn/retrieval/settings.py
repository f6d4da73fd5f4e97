"""The retrieval settings: how a query vector becomes an answer. One typed source for their defaults.

An index version records the settings it was built for (`wherecnn index` writes them beside the model id and
the embedding size); search reads them from there, so the engine, the API, the CLI, the dashboard and
`wherecnn evaluate` answer alike for one index.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetrievalSettings(BaseModel):
    """Coarse retrieval from the store, then a fine stage that places the camera inside the best tiles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index_views: int = Field(
        3,
        ge=1,
        le=5,
        description="Index side: each tile is stored as its cell seen from index_views x index_views centres "
        "(one multivector point that scores its best view; 1: the tile as cut). A camera anywhere in the "
        "cell is then near one stored view.",
    )
    candidates: int = Field(
        8,
        ge=0,
        le=64,
        description="Fine stage: the best tiles (over all searched cities, by coarse score) placed in "
        "metres. 0 turns the fine stage off: answers are tile centres.",
    )
    refine_centres: int = Field(
        3,
        ge=1,
        le=15,
        description="Fine stage, first level: refine_centres x refine_centres view centres, cut from the "
        "candidate's source raster at query time, spanning one stored-view spacing around its best stored "
        "view.",
    )
    refine_keep: int = Field(
        2, ge=1, le=64, description="Fine stage, second level: the best candidates looked at again."
    )
    refine_local: int = Field(
        3,
        ge=1,
        le=9,
        description="Fine stage, second level: refine_local x refine_local centres spanning one first-level "
        "spacing around each kept candidate's best view (1: no second level).",
    )
    refine_views: Literal["first", "all"] = Field(
        "first",
        description="Fine stage: score views by the model's first test-time view alone (a quarter of the "
        "work with four views) or by all of them, as the index does.",
    )
    view_pool: int = Field(
        2, ge=1, le=16, description="A refined tile scores the mean of its view_pool best views."
    )

    hub_weight: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Coarse stage: each tile scores its similarity minus this times its hubness among its "
        "city's tiles (its mean similarity to its 200 most similar other tiles). Off by default: on the "
        "validation city it cost recall through this index (docs/experiments.md).",
    )
    heading_window_deg: float = Field(
        30.0,
        ge=0.0,
        le=180.0,
        description="Heading given: the fine stage tries headings within +/- this of it and answers the best "
        "(heading_source 'refined'); 0 takes the heading as given ('given'). Compasses are often 10-30 "
        "degrees off.",
    )
    heading_step_deg: float = Field(
        15.0,
        gt=0.0,
        le=90.0,
        description="Spacing of the headings the fine stage tries (within the window, or all round when the "
        "heading is unknown).",
    )
    coarse_in_window: bool = Field(
        False,
        description="Heading given: the coarse stage queries the store at every heading of the window (one "
        "query each per city) instead of the given heading alone.",
    )
    coarse_headings: int = Field(
        24,
        ge=1,
        le=72,
        description="Heading unknown: the coarse stage queries the store at this many headings evenly spaced "
        "(one query each per city; a tile keeps its best), the fine stage then tries every "
        "heading_step_deg and answers the heading with the position ('estimated'). 24 (every heading the "
        "fine stage tries) found the most tiles on the validation city (docs/experiments.md).",
    )

    @model_validator(mode="after")
    def _check(self) -> RetrievalSettings:
        if self.candidates and self.refine_keep > self.candidates:
            raise ValueError(f"refine_keep ({self.refine_keep}) cannot exceed candidates ({self.candidates})")
        return self

    @property
    def refines(self) -> bool:
        return self.candidates > 0

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def sources(
        cls, recorded: dict[str, Any] | None, version: str | None = None
    ) -> dict[str, tuple[Any, str]]:
        """Each setting as search resolves it for an index version whose record holds ``recorded`` (its
        pinned settings), and where it came from: that version or the default."""
        resolved = cls.from_dict(recorded)
        pinned = set(recorded or {})
        return {
            name: (getattr(resolved, name), f"index {version or ''}".strip() if name in pinned else "default")
            for name in cls.model_fields
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, **overrides: Any) -> RetrievalSettings:
        """Settings from an index version's record (missing keys take the defaults), then ``overrides``."""
        return cls.model_validate({**(data or {}), **{k: v for k, v in overrides.items() if v is not None}})
