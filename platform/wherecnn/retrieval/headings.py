"""Which headings a query is tried at: the given one (and a window around it) or all round.

The engine embeds the query once per heading (`Embedder.ground_headings`: a model with bearing columns turns
by whole columns without a forward pass); the coarse stage queries the store with a few of them, the fine
stage scores every one against each candidate's views and answers the best heading with the position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wherecnn.retrieval.settings import RetrievalSettings

HEADING_GIVEN = "given"  # used as given (heading_window_deg 0)
HEADING_REFINED = "refined"  # the best within the window around the given heading
HEADING_ESTIMATED = "estimated"  # no heading given: the best all round


@dataclass(frozen=True)
class Headings:
    """The headings (degrees clockwise from north) one query is tried at, which of them the coarse stage
    queries the store with, and what the answer's heading will be called."""

    degrees: np.ndarray
    coarse: tuple[int, ...]
    source: str

    @classmethod
    def plan(cls, settings: RetrievalSettings, given: float | None) -> Headings:
        step = float(settings.heading_step_deg)
        if given is not None and math.isfinite(given):
            w = float(settings.heading_window_deg)
            n = int(math.floor(w / step + 1e-9))
            offsets = np.arange(-n, n + 1, dtype=np.float64) * step
            degrees = np.mod(float(given) + offsets, 360.0)
            coarse = tuple(range(len(degrees))) if settings.coarse_in_window else (n,)
            return cls(degrees, coarse, HEADING_REFINED if n else HEADING_GIVEN)
        count = max(1, int(round(360.0 / step)))
        degrees = np.arange(count, dtype=np.float64) * (360.0 / count)
        wanted = np.arange(settings.coarse_headings) * (360.0 / settings.coarse_headings)
        nearest = sorted({int(np.argmin(circular_deg(degrees, w))) for w in wanted})
        return cls(degrees, tuple(nearest), HEADING_ESTIMATED)

    def __len__(self) -> int:
        return len(self.degrees)


def circular_deg(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Absolute angular difference in degrees, 0-180."""
    d = np.mod(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), 360.0)
    return np.minimum(d, 360.0 - d)
