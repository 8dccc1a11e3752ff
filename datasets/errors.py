"""The one exception the datasets package raises for bad or missing data."""


class DataError(ValueError):
    """Data on disk that cannot be used; the message names the path and the fix, on one line."""
