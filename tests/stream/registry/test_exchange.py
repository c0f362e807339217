"""Signed export files: round trip, and a tampered file changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from learners.serialization import load_signed
from stream.registry.registry import Registry, RegistryError
from stream.store.snapshots import SnapshotStore
from tests.support.registry import dump_all, write_version

pytestmark = pytest.mark.integration


def test_export_import_round_trip(
    store: SnapshotStore, registry: Registry, key: bytes, tmp_path: Path
) -> None:
    v1 = write_version(store, key, {"m": {"Accuracy": 0.75}}, samples=42)
    v2 = write_version(store, key)
    registry.promote("m", v2, "")
    path = registry.export("m", v1, tmp_path / "m.rsx")
    model, v3 = registry.import_(path, "restore")
    assert model == "m" and v3 > v2
    obj, meta = store.load_model("m", v3)
    assert obj == load_signed(store.read_model_blob("m", v1), key)
    assert (meta.samples_learned, meta.metrics, meta.offsets) == (42, {"Accuracy": 0.75}, {"features:0": v1})  # fmt: skip
    _v, cp, offsets = store.checkpoint(v3)
    assert load_signed(cp, key) == {"join": v1} and offsets == store.checkpoint(v1)[2]
    # Importing moves nothing: not latest, not the checkpoint the learner restores, not serving.
    assert (
        store.latest_version("m") == v2
        and cast("tuple[int, bytes, dict[str, int]]", store.latest_checkpoint())[0] == v2
    )
    assert registry.serving_version("m") == v2
    last = registry.history("m")[-1]
    assert (last.action, last.from_, last.to, last.reason) == ("import", v1, v3, "restore")
    assert registry.verify("m", v3)[0]
    registry.rollback("m", to=v3, resume="replay", reason="use the restored one")
    assert registry.serving_version("m") == v3


@pytest.mark.parametrize("where", ["header", "blob", "mac", "truncated", "key"])
def test_tampered_import_is_refused_and_changes_nothing(
    store: SnapshotStore, registry: Registry, key: bytes, tmp_path: Path, where: str
) -> None:
    v1 = write_version(store, key)
    path = registry.export("m", v1, tmp_path / "m.rsx")
    data = bytearray(path.read_bytes())
    if where == "header":
        data[20] ^= 1
    elif where == "blob":
        data[len(data) // 2] ^= 1
    elif where == "mac":
        data[-1] ^= 1
    elif where == "truncated":
        data = data[:-40]
    path.write_bytes(bytes(data))
    if where == "key":
        registry = Registry(store, signing_key=b"another key")
    before = dump_all(store)
    with pytest.raises(RegistryError, match=r"signature mismatch|bad header"):
        registry.import_(path)
    assert dump_all(store) == before


def test_registry_signs_exports_with_the_store_signing_key_by_default(
    store: SnapshotStore, key: bytes, tmp_path: Path
) -> None:
    """The documented default: a Registry given no key signs with its store's signing key (it
    used to look for a ``key`` attribute the store did not have, so the default was None)."""
    registry = Registry(store, by="tester")
    assert registry.signing_key == key
    v1 = write_version(store, key)
    model, v2 = registry.import_(registry.export("m", v1, tmp_path / "m.rsx"), "round trip")
    assert (model, store.read_model_blob("m", v2)) == ("m", store.read_model_blob("m", v1))
