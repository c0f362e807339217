"""The one configuration object of riverstream.

Every setting comes from an environment variable prefixed with ``RIVERSTREAM_`` (or a ``.env``
file), is validated when `Settings` is built and cannot be changed afterwards. Modules never
read the environment themselves: the CLI builds one `Settings` and passes it down.

>>> s = Settings(topic_features="f", partitions=3)
>>> s.topic_features, s.partitions
('f', 3)
>>> s.partitions = 4  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings
...
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError

ENV_PREFIX = "RIVERSTREAM_"


def default_state_dir() -> Path:
    """Where `riverstream services up` records its services when ``RIVERSTREAM_STATE_DIR`` is
    unset: one place per user, the same from every directory, so that `services up` in one
    directory and `publish` in another find the same Kafka. The XDG Base Directory rule:
    ``$XDG_STATE_HOME/riverstream``, or ``~/.local/state/riverstream`` when it is unset or not
    an absolute path.

    >>> default_state_dir().name
    'riverstream'
    """
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "riverstream"


class Settings(BaseSettings):
    """All settings; the environment variable of field ``x`` is ``RIVERSTREAM_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    # -- where the services are (empty: discovered from the local services' state) --
    kafka_bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers, host:port[,host:port]."
    )
    redis_url: str | None = Field(None, description="Redis URL, e.g. redis://127.0.0.1:6379/0.")
    redis_read_url: str | None = Field(
        None,
        description="Where the API reads snapshots and hears their notifications: a replica's "
        "URL (a replica relays what the primary publishes), or `replica` with Sentinels (a "
        "replica they name, else the primary). Unset: the primary.",
    )
    redis_sentinels: str = Field(
        "",
        description="Sentinel addresses host:port[,host:port]: every client asks them for the "
        "primary and follows a failover (REDIS_URL then only gives the database and password).",
    )
    redis_sentinel_master: str = Field(
        "riverstream", description="The name under which the Sentinels monitor the primary."
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="Replicas that must have a snapshot (Redis WAIT, at most 1 s) before it is "
        "announced, so that a failover does not lose an announced version (0: no wait).",
    )
    prometheus_url: str | None = Field(None, description="Prometheus base URL.")
    # -- security of the connections (stream.kafka.security, stream.store.connect) --
    kafka_security_protocol: str = Field(
        "PLAINTEXT",
        description="Kafka connections: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (TLS and "
        "SASL), the same for the learner, the API, the workers and the CLI.",
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-512", description="SASL mechanism: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA certificate (PEM) that signed the brokers' (unset: the system's)."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for brokers that require one (mutual TLS)."
    )
    kafka_ssl_keyfile: Path | None = Field(None, description="Its private key (PEM).")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that a broker's certificate names the host connected to."
    )
    redis_username: str | None = Field(
        None, description="Redis ACL user (also for Sentinels); overrides the URL's."
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password (of the ACL user, else `requirepass`)."
    )
    redis_ssl_cafile: Path | None = Field(
        None,
        description="CA certificate (PEM) of Redis' TLS: used with rediss:// URLs (with "
        "Sentinels: a rediss:// REDIS_URL makes every connection TLS).",
    )
    redis_ssl_certfile: Path | None = Field(
        None, description="Client certificate (PEM) for a Redis that requires one."
    )
    redis_ssl_keyfile: Path | None = Field(None, description="Its private key (PEM).")

    # -- local services --
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Pids, addresses and data of local services (one per user by default; a "
        "project may set its own).",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "riverstream", description="Downloaded Kafka jars."
    )
    kafka_version: str = Field("4.3.1", description="Apache Kafka release run by `services up`.")
    service_start_timeout: float = Field(90.0, gt=0, description="Seconds to wait for readiness.")

    # -- topics --
    topic_features: str = Field("riverstream.features", description="Feature events topic.")
    topic_labels: str = Field("riverstream.labels", description="Label events topic.")
    topic_dlq: str = Field("riverstream.dlq", description="Dead-letter topic.")
    topic_requests: str = Field(
        "riverstream.requests", description="Asynchronous prediction requests topic."
    )
    topic_predictions: str = Field(
        "riverstream.predictions", description="Asynchronous prediction answers topic."
    )
    partitions: int = Field(
        3,
        ge=1,
        le=1024,
        description="Partitions of the feature, label, request and prediction topics.",
    )

    # -- event limits --
    max_event_bytes: int = Field(1_048_576, gt=0, description="Largest accepted event, bytes.")
    max_features: int = Field(10_000, gt=0, description="Most features in one event.")
    max_id_length: int = Field(256, gt=0, description="Longest accepted event id.")
    max_future_seconds: float = Field(
        3600.0,
        ge=0,
        description="The learner dead-letters an event (reason `event_time_in_future`) whose "
        "time is more than this many seconds after its Kafka record's timestamp, as Kafka's "
        "`log.message.timestamp.after.max.ms` does (most often a time sent in milliseconds): "
        "one such event would carry the watermark and the join's clock to the far future. "
        "0: no check (for event times on a scale larger than epoch seconds).",
    )

    # -- learner --
    redis_prefix: str = Field("riverstream", description="Prefix of every Redis key.")
    learner: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$",
        description="This learner's name (`learn --learner`): its checkpoints and commands are "
        "its own, and it learns only the models it owns (a model claimed by another learner is "
        "refused; `snapshots handover` moves one).",
    )
    snapshot_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key signing snapshots (required to learn and serve)."
    )
    snapshot_every_labels: int = Field(10_000, gt=0, description="Snapshot after N labels...")
    snapshot_every_seconds: float = Field(30.0, gt=0, description="...or after T seconds.")
    redis_outage_seconds: float = Field(
        300.0, gt=0,
        description="Longest Redis outage (unreachable, or refusing writes) the learner rides "
        "out (learning on, snapshots retried).",
    )  # fmt: skip
    snapshot_fork_min_bytes: int = Field(
        1_000_000,
        ge=0,
        description="Snapshots whose previous one was smaller (the first one of a process: "
        "whose models pickle smaller, counted up to this size) are serialized in-process and "
        "written by a thread (a fork stalls the learner ≈ 7-10 ms, and its copy-on-write faults "
        "slow the learning while the child lives); larger ones in a forked child. 0: always fork.",
    )
    snapshot_chunk_bytes: int = Field(
        64 * 1024 * 1024, gt=0, le=512 * 1024 * 1024, description="Redis value size per chunk."
    )
    snapshot_retention: int = Field(50, ge=1, description="Versions kept per model.")
    live_every_seconds: float = Field(
        0.25, ge=0,
        description="Live updates: under the `always` policy, serving follows the learner between "
        "versions, a model at most this often (0: versions only).",
    )  # fmt: skip
    live_max_bytes: int = Field(
        1_000_000, ge=0, description="Live updates only for models whose blob is smaller."
    )
    live_max_share: float = Field(
        0.05, gt=0, le=1,
        description="Most of the learner's time live updates may take (they are spaced out).",
    )  # fmt: skip
    join_ttl: float = Field(
        1e12,
        gt=0,
        description="Event-time units (seconds) a feature waits for its label (and vice versa).",
    )
    join_max_pending: int = Field(1_000_000, gt=0, description="Most events held by the join.")
    watermark_idle_grace: float = Field(
        2.0, ge=0, description="Seconds all inputs must be idle before held events are released."
    )
    learner_metrics_port: int = Field(
        9108, ge=0, le=65535, description="Learner /metrics port (0: no exporter)."
    )
    metrics_host: str = Field("127.0.0.1", description="Bind address of the learner's /metrics.")
    consumer_batch: int = Field(10_000, gt=0, description="Most messages fetched per poll.")
    trace_every_labels: int = Field(
        100, ge=0, description="Learning curve: a point every N labels per model (0: none)."
    )
    trace_max_points: int = Field(
        10_000, gt=0, description="Learning curve: points kept per model (the oldest go first)."
    )
    compare: str = Field(
        "",
        description="Champion/challenger pairs the learner compares on ground truth: "
        "CHAMPION:CHALLENGER[,...] or all (empty: none; `learn --compare` adds pairs).",
    )

    # -- serving --
    serve_host: str = Field("127.0.0.1", description="API bind address.")
    serve_port: int = Field(8000, ge=0, le=65535, description="API port.")
    serve_workers: int = Field(1, ge=1, description="API worker processes.")
    serve_reuse_port: bool = Field(
        True,
        description="With several workers on Linux, each listens on its own socket (SO_REUSEPORT) "
        "and the kernel spreads connections evenly; false: one shared socket, where an idle "
        "worker may take a whole burst of connections (but none waits for a busy worker).",
    )
    serve_direct_answers: bool = Field(
        True,
        description="Answer the hot routes (model and graph predict, v2 infer) in the server's "
        "HTTP protocol once a request's body is read, without the ASGI cycle; false: "
        "every request goes through ASGI (answers are the same).",
    )
    serve_models: str = Field("", description="Comma-separated models to serve (empty: all).")
    serve_max_instances: int = Field(
        1000,
        gt=0,
        description="Most instances in a batch request, and most events in one "
        "POST /v1/features or /v1/labels.",
    )
    serve_max_body_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Largest accepted request body, bytes."
    )
    serve_poll_seconds: float = Field(1.0, gt=0, description="Version polling fallback interval.")
    serve_start_wait_seconds: float = Field(
        30.0, ge=0, description="Longest a worker waits at start for its first look at Redis."
    )
    serve_graph_metric: str = Field(
        "",
        description="Metric weighing `by_metric` graph ensembles (empty: each model's first by name).",
    )

    # -- console --
    console_host: str = Field("127.0.0.1", description="Console bind address.")
    console_port: int = Field(8050, ge=0, le=65535, description="Console port.")
    console_token: SecretStr | None = Field(
        None,
        description="Enables the console's promote/rollback/pin actions, sent by the page in a "
        "header (unset: the console is read-only).",
    )
    console_metrics_url: str = Field(
        "",
        description="The learner's /metrics read by the console (empty: METRICS_HOST and "
        "LEARNER_METRICS_PORT).",
    )

    # -- the closed loop over HTTP --
    ingest_token: SecretStr | None = Field(
        None,
        description="Bearer token required by POST /v1/features, /v1/labels and predict with an "
        "id (unset: open; set it in production).",
    )
    predict_token: SecretStr | None = Field(
        None,
        description="Bearer token required by every predict route (unset: open); a logged "
        "predict takes the ingest token instead, when that is set.",
    )

    # -- asynchronous and batch predictions --
    predict_group: str = Field(
        "riverstream.predict", description="Consumer group of the prediction workers."
    )
    predict_metrics_port: int = Field(
        9109, ge=0, le=65535, description="Prediction worker /metrics port (0: no exporter)."
    )
    predict_stop_seconds: float = Field(
        10.0,
        ge=0,
        description="How long a stopping prediction worker waits for the broker to acknowledge "
        "its last answers; what is not acknowledged by then is not committed, and answered "
        "again by the group.",
    )
    lookup_ttl_seconds: int = Field(
        604800, ge=0, description="Lifetime of a stored batch prediction table (0: no expiry)."
    )

    def to_environment(self) -> dict[str, str]:
        """``RIVERSTREAM_*`` variables that rebuild these settings in another process.

        >>> Settings(partitions=5).to_environment()["RIVERSTREAM_PARTITIONS"]
        '5'
        """
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env

    def require_snapshot_key(self) -> bytes:
        """The HMAC key as bytes, or a `ConfigError` naming the variable to set."""
        if self.snapshot_key is not None and self.snapshot_key.get_secret_value():
            return self.snapshot_key.get_secret_value().encode()
        raise ConfigError(
            f"{ENV_PREFIX}SNAPSHOT_KEY is not set (nor a local key from `riverstream services "
            "up`); set it to a long random secret shared by learners and servers"
        )

    def topics(self) -> dict[str, int]:
        """Every topic riverstream uses, with its partition count (the one topic set).

        >>> sorted(Settings(partitions=2).topics().items())  # doctest: +NORMALIZE_WHITESPACE
        [('riverstream.dlq', 1), ('riverstream.features', 2), ('riverstream.labels', 2),
         ('riverstream.predictions', 2), ('riverstream.requests', 2)]
        """
        return {self.topic_features: self.partitions, self.topic_labels: self.partitions,
                self.topic_dlq: 1, self.topic_requests: self.partitions,
                self.topic_predictions: self.partitions}  # fmt: skip


def invalid_settings(exc: ValidationError) -> ConfigError:
    """A `ConfigError` naming each ``RIVERSTREAM_`` variable that `Settings` refused, and why
    (pydantic's words), never the value given: a password must not reach a terminal or a log.

    >>> try:
    ...     Settings(serve_port="abc")
    ... except ValidationError as exc:
    ...     print(invalid_settings(exc))
    invalid setting RIVERSTREAM_SERVE_PORT: Input should be a valid integer, unable to parse string as an integer
    """
    said = [
        f"{ENV_PREFIX}{'.'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    ]
    return ConfigError(f"invalid setting{'s' if len(said) > 1 else ''} {'; '.join(said)}")
