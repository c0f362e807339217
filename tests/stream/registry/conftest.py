"""The registry's fixtures (`key`, a `store` from the test's `settings`, a `registry`)."""

from tests.support.registry import history_parses, key, registry, store

__all__ = ["history_parses", "key", "registry", "store"]
