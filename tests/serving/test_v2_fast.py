"""`serving.v2_fast`: the raw-ASGI infer route decodes only the headers `serving.v2` reads."""

from __future__ import annotations

from serving.v2_fast import READ_HEADERS, read_headers


def test_only_the_headers_read_are_decoded_whatever_their_case() -> None:
    raw = [
        (b"Host", b"127.0.0.1"),
        (b"Inference-Header-Content-Length", b"12"),
        (b"CONTENT-ENCODING", b"gzip"),
        (b"content-type", b"application/json"),
        (b"x-trace", b"\xe9t\xe9"),  # latin-1, never decoded
    ]
    assert read_headers(raw) == {
        "inference-header-content-length": "12",
        "content-encoding": "gzip",
    }
    assert {name.decode() for name in READ_HEADERS} == set(read_headers(raw))
    assert read_headers([]) == {}
