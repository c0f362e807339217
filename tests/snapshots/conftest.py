"""The snapshot tests use the shared real Redis (``redis_url`` in tests/conftest.py)."""
