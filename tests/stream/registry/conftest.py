"""The registry's fixtures (`key`, a `store` from the test's `settings`, a `registry`)."""

from tests.support.registry import key, registry, store

__all__ = ["key", "registry", "store"]
