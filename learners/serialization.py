"""Turning learner state into signed bytes and back, without ever unpickling unsigned data.

A signed blob is ``MAGIC + HMAC-SHA256(key, body) + body`` where ``body`` is the zlib-compressed
pickle. `load_signed` checks the MAC (in constant time) before it decompresses or unpickles
anything, so a tampered or foreign blob is refused with `SnapshotIntegrityError`.

>>> key = b"secret"
>>> blob = dump_signed({"w": [1.0, 2.0]}, key)
>>> load_signed(blob, key)
{'w': [1.0, 2.0]}
>>> tampered = blob[:-1] + bytes([blob[-1] ^ 1])
>>> load_signed(tampered, key)
Traceback (most recent call last):
...
schemas.errors.SnapshotIntegrityError: signature mismatch: the snapshot was tampered with or signed with another key
>>> load_signed(blob, b"other key")
Traceback (most recent call last):
...
schemas.errors.SnapshotIntegrityError: signature mismatch: the snapshot was tampered with or signed with another key
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import pickle
import time
import zlib
from collections.abc import Iterable
from typing import Any

from schemas.errors import SnapshotIntegrityError

MAGIC = b"RSS1"
_MAC_SIZE = hashlib.sha256().digest_size
COMPRESSION_LEVEL = 1


def dump_signed(obj: Any, key: bytes, *, level: int = COMPRESSION_LEVEL) -> bytes:
    """Pickle, compress and sign ``obj``."""
    return sign_pickled(pickle_state(obj), key, level=level)


def pickle_state(obj: Any) -> bytes:
    """The pickle of ``obj`` that `dump_signed` signs (`sign_pickled` signs it later)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class _Full(Exception):
    """The pickles passed the limit of `pickled_within`."""


class _Bounded:
    """A file that keeps what is written to it, up to ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise _Full
        self.chunks.append(bytes(data))
        return len(data)


def pickled_within(objs: Iterable[Any], limit: int) -> list[bytes] | None:
    """``objs``' pickles, or None as soon as they pass ``limit`` bytes together: deciding by
    size costs pickling at most ``limit`` bytes, whatever the size, and the pickles of a small
    state are kept (`sign_pickled` signs them as `dump_signed` would its objects).

    >>> [len(p) > 0 for p in pickled_within([{"w": [1.0, 2.0]}], 1000)]
    [True]
    >>> pickled_within([list(range(10_000))], 1000) is None
    True
    """
    pickles = []
    for obj in objs:
        sink = _Bounded(limit)
        try:
            pickle.Pickler(sink, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        except _Full:
            return None
        pickles.append(b"".join(sink.chunks))
        limit -= sink.size
    return pickles


def sign_pickled(body: bytes, key: bytes, *, level: int = COMPRESSION_LEVEL) -> bytes:
    """Compress and sign a pickle: `dump_signed` of what it pickles."""
    compressed = zlib.compress(body, level)
    return MAGIC + hmac.new(key, compressed, hashlib.sha256).digest() + compressed


def verify_signed(blob: bytes, key: bytes) -> bytes:
    """Return the body of a signed blob, or raise `SnapshotIntegrityError`."""
    if not key:
        raise SnapshotIntegrityError("no signing key configured: refusing to load a snapshot")
    if len(blob) < len(MAGIC) + _MAC_SIZE or not blob.startswith(MAGIC):
        raise SnapshotIntegrityError("not a signed riverstream snapshot (bad header)")
    mac = blob[len(MAGIC) : len(MAGIC) + _MAC_SIZE]
    body = blob[len(MAGIC) + _MAC_SIZE :]
    expected = hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise SnapshotIntegrityError(
            "signature mismatch: the snapshot was tampered with or signed with another key"
        )
    return body


def load_signed(blob: bytes, key: bytes, *, cooperative: bool = False) -> Any:
    """Verify, decompress and unpickle a blob made by `dump_signed`.

    With ``cooperative``, the body is inflated on demand through `InflatingReader`: unpickling
    then runs Python code between frames, so other threads (an API's event loop) keep running
    while a large model loads instead of waiting for the whole `pickle.loads`.

    >>> blob = dump_signed(list(range(5)), b"k")
    >>> load_signed(blob, b"k", cooperative=True)
    [0, 1, 2, 3, 4]
    """
    body = verify_signed(blob, key)
    if cooperative:
        # The collector would run its passes in this thread, over every object created so
        # far, holding the interpreter lock for tens of ms each: paused while loading.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return pickle.Unpickler(InflatingReader(body)).load()
        finally:
            if enabled:
                gc.enable()
    return pickle.loads(zlib.decompress(body))


class InflatingReader:
    r"""A read-only file over a zlib stream, inflated ``chunk`` compressed bytes at a time.

    Every `read` is Python code and every inflated chunk ends with ``time.sleep(0)``: a thread
    unpickling from it hands the interpreter lock over regularly.

    >>> reader = InflatingReader(zlib.compress(b"line one\nline two"), chunk=4)
    >>> reader.readline(), reader.read(4), reader.read()
    (b'line one\n', b'line', b' two')
    """

    def __init__(self, body: bytes, chunk: int = 1 << 16) -> None:
        self._inflate = zlib.decompressobj()
        self._body = memoryview(body)
        self._chunk = chunk
        self._pos = 0
        self._buf = bytearray()
        self._off = 0
        self._eof = False

    def _fill(self, n: int | None) -> None:
        while not self._eof and (n is None or len(self._buf) - self._off < n):
            piece = self._body[self._pos : self._pos + self._chunk]
            self._pos += len(piece)
            if piece:
                self._buf += self._inflate.decompress(piece)
            else:
                self._buf += self._inflate.flush()
                self._eof = True
            time.sleep(0)  # let other threads run

    def _take(self, end: int) -> bytes:
        data = bytes(self._buf[self._off : end])
        self._off = end
        if self._off > 1 << 20:  # drop what was read, now and then
            del self._buf[: self._off]
            self._off = 0
        return data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            self._fill(None)
            return self._take(len(self._buf))
        self._fill(n)
        return self._take(min(self._off + n, len(self._buf)))

    def readline(self) -> bytes:
        while True:
            newline = self._buf.find(b"\n", self._off)
            if newline >= 0 or self._eof:
                break
            self._fill(len(self._buf) - self._off + 1)
        return self._take(newline + 1 if newline >= 0 else len(self._buf))


def sha256_hex(blob: bytes) -> str:
    """Checksum stored in snapshot metadata."""
    return hashlib.sha256(blob).hexdigest()
