"""The search engine: a ground image in, ranked locations per city out; plus the HTTP API (`api`)."""

from wherecnn.search.engine import BestGuess, Bounds, CityInfo, HeatMap, SearchEngine, SearchResult, rasterise
from wherecnn.search.errors import (
    BadParameterError,
    EmptyIndexError,
    ImageTooLargeError,
    NotAnImageError,
    SearchInputError,
    UnknownCityError,
)
from wherecnn.search.query import GeoPrior, load_query

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
