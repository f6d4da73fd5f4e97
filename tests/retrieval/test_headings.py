"""Which headings a query is tried at: a window around a given heading, or all round."""

from __future__ import annotations

import numpy as np
import pytest
from wherecnn.retrieval.headings import (
    HEADING_ESTIMATED,
    HEADING_GIVEN,
    HEADING_REFINED,
    Headings,
    circular_deg,
)
from wherecnn.retrieval.settings import RetrievalSettings


def test_a_given_heading_is_searched_within_its_window_and_queried_as_given() -> None:
    plan = Headings.plan(RetrievalSettings(heading_window_deg=30, heading_step_deg=15), 350.0)
    assert plan.degrees.tolist() == [320.0, 335.0, 350.0, 5.0, 20.0]
    assert plan.coarse == (2,) and plan.source == HEADING_REFINED


def test_the_coarse_stage_may_query_the_whole_window() -> None:
    plan = Headings.plan(RetrievalSettings(heading_window_deg=30, coarse_in_window=True), 90.0)
    assert plan.coarse == (0, 1, 2, 3, 4) and plan.degrees.tolist() == [60.0, 75.0, 90.0, 105.0, 120.0]


def test_a_zero_window_takes_the_heading_as_given() -> None:
    plan = Headings.plan(RetrievalSettings(heading_window_deg=0), 123.0)
    assert plan.degrees.tolist() == [123.0] and plan.coarse == (0,) and plan.source == HEADING_GIVEN


@pytest.mark.parametrize("given", [None, float("nan")])
def test_no_heading_sweeps_all_round_and_queries_a_few(given: float | None) -> None:
    plan = Headings.plan(RetrievalSettings(heading_step_deg=15, coarse_headings=8), given)
    assert len(plan) == 24 and plan.source == HEADING_ESTIMATED
    assert plan.degrees[list(plan.coarse)].tolist() == [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]


def test_circular_difference() -> None:
    assert circular_deg(350.0, 10.0) == 20.0
    assert np.allclose(circular_deg(np.array([0.0, 180.0, 270.0]), 90.0), [90.0, 90.0, 180.0])
