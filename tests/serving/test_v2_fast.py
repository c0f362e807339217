"""`serving.v2_fast`: the raw-ASGI infer route decodes only the headers `serving.v2` reads."""

from __future__ import annotations

from serving.v2_fast import READ_HEADERS, read_headers


def test_only_the_headers_read_are_decoded() -> None:
    """ASGI headers: lower-case names (servers lower them; httpx's ASGI transport too)."""
    raw = [
        (b"host", b"127.0.0.1"),
        (b"inference-header-content-length", b"12"),
        (b"content-encoding", b"gzip"),
        (b"content-type", b"application/json"),
        (b"x-trace", b"\xe9t\xe9"),  # latin-1, never decoded
    ]
    assert read_headers(raw) == {
        "inference-header-content-length": "12",
        "content-encoding": "gzip",
    }
    assert {name.decode() for name in READ_HEADERS} == set(read_headers(raw))
    assert read_headers([]) == {}
