"""Export and import of one version as a signed file, to move a model between stores.

Layout: magic, 4-byte header length, JSON header, model blob, checkpoint blob, HMAC-SHA256 (the
signing key) over everything before it. The signature is checked before anything is parsed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from learners.serialization import sha256_hex, verify_signed
from schemas.errors import RegistryError, SnapshotIntegrityError
from schemas.names import is_model_name
from schemas.records import SnapshotMeta

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import redis

    from stream.store.keys import RedisKeys
    from stream.store.snapshots import SnapshotStore


class Registry(Protocol):
    """What export and import use of a `stream.registry.registry.Registry` (which calls them:
    a protocol, so that this module does not import it back)."""

    @property
    def store(self) -> SnapshotStore: ...

    @property
    def client(self) -> redis.Redis: ...

    @property
    def keys(self) -> RedisKeys: ...

    @property
    def by(self) -> str: ...

    @property
    def signing_key(self) -> bytes | None: ...

    def _read(self, what: str, fn: Callable[[], Any]) -> Any: ...

    def _require_version(self, r: Any, model: str, version: int) -> SnapshotMeta: ...

    def _entry(
        self, action: str, frm: int | None, to: int | None, reason: str, **kw: Any
    ) -> str: ...

    def register(
        self,
        meta: SnapshotMeta,
        blob: bytes,
        version: int,
        checkpoint: bytes | None = None,
        offsets: Mapping[str, int] | None = None,
        *,
        history_entry: str | None = None,
    ) -> None: ...


EXPORT_MAGIC = b"RSEXPORT1\n"
_MAC_SIZE = hashlib.sha256().digest_size


def _signing_key(registry: Registry) -> bytes:
    if not registry.signing_key:
        raise RegistryError("no signing key: create the Registry with signing_key=...")
    return registry.signing_key


def export_version(registry: Registry, model: str, version: int, path: str | Path) -> Path:
    """Write ``model`` v``version`` (and its checkpoint, if kept) to a signed file.

    Layout: magic, 4-byte header length, JSON header, model blob, checkpoint blob,
    HMAC-SHA256 (store key) over everything before it.
    """
    key = _signing_key(registry)
    registry._read("export", lambda: registry._require_version(registry.client, model, version))
    blob = registry.store.read_model_blob(model, version)
    meta = registry.store.meta(model, version)
    checkpoint: tuple[bytes, dict[str, int]] | None = None
    if registry._read(
        "export", lambda: registry.client.exists(registry.keys.checkpoint_meta(version))
    ):
        _v, cp_blob, offsets = registry.store.checkpoint(version)
        checkpoint = (cp_blob, offsets)
    header = {
        "format": 1,
        "meta": dataclasses.asdict(meta),
        "model_size": len(blob),
        "checkpoint": None
        if checkpoint is None
        else {"size": len(checkpoint[0]), "offsets": checkpoint[1]},
        "exported_at": time.time(),
        "exported_by": registry.by,
    }
    head = json.dumps(header, sort_keys=True).encode()
    body = EXPORT_MAGIC + struct.pack(">I", len(head)) + head + blob
    body += checkpoint[0] if checkpoint else b""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(body + hmac.new(key, body, hashlib.sha256).digest())
    tmp.replace(target)
    return target


def import_file(registry: Registry, path: str | Path, reason: str = "") -> tuple[str, int]:
    """Verify a file made by `export`, then register it as a new version: (model, version).

    The signature is checked before anything is parsed; the new version does not move
    ``latest``, ``checkpoint:latest`` or any serving pointer: promote it to serve it.
    """
    key = _signing_key(registry)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc}") from None
    header, blob, cp_blob = _parse_export(data, key)
    meta = SnapshotMeta(**header["meta"])
    if not is_model_name(meta.model):
        raise RegistryError(f"invalid model name {meta.model!r} in {path}")
    if sha256_hex(blob) != meta.sha256:
        raise RegistryError(f"{path}: model checksum mismatch")
    try:
        verify_signed(blob, key)
        if cp_blob is not None:
            verify_signed(cp_blob, key)
    except SnapshotIntegrityError as exc:
        raise RegistryError(f"{path}: {exc}") from None
    version = registry._read("import", registry.store.next_version)
    entry = registry._entry(
        "import", meta.version, version, reason or f"imported from {Path(path).name}",
        detail={"source_model": meta.model, "source_version": meta.version},
    )  # fmt: skip
    offsets = (header["checkpoint"] or {}).get("offsets")
    registry.register(meta, blob, version, cp_blob, offsets, history_entry=entry)
    return meta.model, version


def _parse_export(data: bytes, key: bytes) -> tuple[dict[str, Any], bytes, bytes | None]:
    """Check the magic and the HMAC first, then split header, model and checkpoint blobs."""
    if not data.startswith(EXPORT_MAGIC) or len(data) < len(EXPORT_MAGIC) + 4 + _MAC_SIZE:
        raise RegistryError("not a riverstream export file (bad header)")
    body, mac = data[:-_MAC_SIZE], data[-_MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        raise RegistryError(
            "signature mismatch: the export file was tampered with or signed with another key"
        )
    start = len(EXPORT_MAGIC) + 4
    (n,) = struct.unpack(">I", body[len(EXPORT_MAGIC) : start])
    try:
        header = json.loads(body[start : start + n])
        model_size = int(header["model_size"])
        cp = header["checkpoint"]
        cp_size = 0 if cp is None else int(cp["size"])
        header["meta"] = {f.name: header["meta"][f.name] for f in dataclasses.fields(SnapshotMeta)}
    except (ValueError, TypeError, KeyError) as exc:
        raise RegistryError(f"unreadable export header: {exc!r}") from None
    rest = body[start + n :]
    if len(rest) != model_size + cp_size:
        raise RegistryError("export file is truncated or has extra bytes")
    return header, rest[:model_size], (rest[model_size:] if cp is not None else None)
