"""The error hierarchy. Every error riverstream raises on purpose derives from `RiverstreamError`."""

from __future__ import annotations


class RiverstreamError(Exception):
    """Root of every error raised on purpose by riverstream."""


class ConfigError(RiverstreamError):
    """A setting is missing or invalid; the message names the environment variable."""


class SchemaError(RiverstreamError):
    """An event or request does not match its schema; `reason` says why, `field` where.

    >>> err = SchemaError("not_finite", "features.x", "number is not finite")
    >>> str(err)
    'not_finite at features.x: number is not finite'
    """

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        where = f" at {field}" if field else ""
        super().__init__(f"{reason}{where}: {detail}")

    def __reduce__(self) -> tuple[type[SchemaError], tuple[str, str | None, str]]:
        """Pickled with its own arguments (batch scoring hands rows to worker processes).

        >>> import pickle
        >>> str(pickle.loads(pickle.dumps(SchemaError("bad_json", None, "line 1"))))
        'bad_json: line 1'
        """
        return SchemaError, (self.reason, self.field, self.detail)


class ServiceError(RiverstreamError):
    """A local service (Kafka, Redis, Prometheus) could not be installed, started or reached."""


class KafkaAdapterError(RiverstreamError):
    """The Kafka client failed; wraps the client's own exception."""


class SnapshotError(RiverstreamError):
    """A snapshot could not be written or read."""


class SnapshotIntegrityError(SnapshotError):
    """A snapshot's signature or checksum does not match: it is never unpickled."""


class ModelSpecError(RiverstreamError):
    """A model or metric specification cannot be resolved."""


class RegistryError(RiverstreamError):
    """A registry operation was refused or failed; nothing was changed."""
