"""The property tests' API (`tests/support/fuzz.py`)."""

from tests.support.fuzz import small_api

__all__ = ["small_api"]
