"""The result types on a real search: the GeoJSON and CSV forms of the ranked answers (`RANKED_COLUMNS`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from wherecnn.search import SearchEngine
from wherecnn.search.results import RANKED_COLUMNS

if TYPE_CHECKING:
    from .conftest import TinyIndex


def test_geojson_and_csv(engine: SearchEngine, tiny_index: TinyIndex) -> None:
    t = tiny_index.tile("beta-g0505")
    result = engine.search(t["image"], k=2, true_lat=t["lat"], true_lon=t["lon"])
    gj = json.loads(json.dumps(result.to_geojson()))
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 4
    first = gj["features"][0]
    assert first["geometry"]["coordinates"] == [first["properties"]["lon"], first["properties"]["lat"]]
    assert gj["best"]["tile_id"] == "beta-g0505"
    csv = result.to_csv().splitlines()
    assert csv[0] == ",".join(RANKED_COLUMNS) and "heading_deg" in RANKED_COLUMNS and len(csv) == 5
