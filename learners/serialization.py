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

import hashlib
import hmac
import pickle
import zlib
from typing import Any

from schemas.errors import SnapshotIntegrityError

MAGIC = b"RSS1"
_MAC_SIZE = hashlib.sha256().digest_size
COMPRESSION_LEVEL = 1


def dump_signed(obj: Any, key: bytes, *, level: int = COMPRESSION_LEVEL) -> bytes:
    """Pickle, compress and sign ``obj``."""
    body = zlib.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), level)
    return MAGIC + hmac.new(key, body, hashlib.sha256).digest() + body


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


def load_signed(blob: bytes, key: bytes) -> Any:
    """Verify, decompress and unpickle a blob made by `dump_signed`."""
    body = verify_signed(blob, key)
    return pickle.loads(zlib.decompress(body))


def sha256_hex(blob: bytes) -> str:
    """Checksum stored in snapshot metadata."""
    return hashlib.sha256(blob).hexdigest()
