"""The one exception type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input to the data pipeline: a one-line message that names the culprit (file, line number or argument).

    Entry points catch it, print the message and exit with status 2.
    """
