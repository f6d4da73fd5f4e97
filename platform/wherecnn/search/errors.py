"""Errors the search layer raises for bad input, each naming the field and what was expected.

The API maps them to 4xx answers by `code`; the CLI prints `str(error)`. Nothing here carries a stack trace
to a client.
"""

from __future__ import annotations


class SearchInputError(ValueError):
    """A request the engine refuses: `field` names the input, `code` is a stable machine-readable reason."""

    status = 400
    code = "bad_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotAnImageError(SearchInputError):
    code = "not_an_image"


class ImageTooLargeError(SearchInputError):
    status = 413
    code = "image_too_large"


class UnknownCityError(SearchInputError):
    status = 422
    code = "unknown_city"


class BadParameterError(SearchInputError):
    status = 422
    code = "bad_parameter"


class EmptyIndexError(SearchInputError):
    """The store holds no tiles (yet): the fix is to build an index, not to change the request."""

    status = 503
    code = "empty_index"


class IndexMismatchError(SearchInputError):
    """The checkpoint is not the model the index was built with: its vectors would not compare."""

    status = 503
    code = "index_mismatch"
