"""The search engine: a ground image in, ranked locations per city out; plus the HTTP API (`api`)."""

from wherecnn.search.engine import SearchEngine
from wherecnn.search.errors import (
    BadParameterError,
    EmptyIndexError,
    ImageTooLargeError,
    NotAnImageError,
    SearchInputError,
    UnknownCityError,
)
from wherecnn.search.heatmap import HeatMap, rasterise
from wherecnn.search.query import GeoPrior, load_query
from wherecnn.search.results import BestGuess, Bounds, CityInfo, SearchResult

__all__ = [
    "BadParameterError",
    "BestGuess",
    "Bounds",
    "CityInfo",
    "EmptyIndexError",
    "GeoPrior",
    "HeatMap",
    "ImageTooLargeError",
    "NotAnImageError",
    "SearchEngine",
    "SearchInputError",
    "SearchResult",
    "UnknownCityError",
    "load_query",
    "rasterise",
]
