"""How every Kafka client of riverstream authenticates and encrypts: one place, from settings.

Managed Kafka services refuse plain connections; they want TLS, and usually SASL/SCRAM users.
`KafkaSecurity` holds what the settings say (``RIVERSTREAM_KAFKA_SECURITY_PROTOCOL``,
``..._SASL_MECHANISM``, ``..._SASL_USERNAME``, ``..._SASL_PASSWORD``, ``..._SSL_CAFILE``,
``..._SSL_CERTFILE``, ``..._SSL_KEYFILE``, ``..._SSL_CHECK_HOSTNAME``) and renders it for the two
client libraries riverstream uses, so that the learner, the API, the prediction workers and the
CLI connect the same way:

- `KafkaSecurity.librdkafka`: the properties of confluent-kafka (librdkafka) clients,
- `KafkaSecurity.kafka_python`: the keyword arguments of kafka-python clients.

Both are empty for PLAINTEXT, the default: nothing changes for a local broker.

>>> s = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "app", "secret", "/etc/ca.pem")
>>> s.librdkafka()["sasl.mechanisms"], s.librdkafka()["ssl.ca.location"]
('SCRAM-SHA-512', '/etc/ca.pem')
>>> s.kafka_python()["sasl_plain_username"], s.kafka_python()["security_protocol"]
('app', 'SASL_SSL')
>>> KafkaSecurity().librdkafka(), KafkaSecurity().kafka_python()
({}, {})
>>> KafkaSecurity("SASL_SSL")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
schemas.errors.ConfigError: RIVERSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from schemas.errors import ConfigError

if TYPE_CHECKING:
    from schemas.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """Security of a Kafka connection (see the module); validated when built."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        var = "RIVERSTREAM_KAFKA_"
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"{var}SECURITY_PROTOCOL={self.protocol}: one of {PROTOCOLS}")
        if self.sasl and self.mechanism not in MECHANISMS:
            raise ConfigError(f"{var}SASL_MECHANISM={self.mechanism}: one of {MECHANISMS}")
        if self.sasl and not (self.username and self.password):
            raise ConfigError(
                f"{var}SECURITY_PROTOCOL={self.protocol} needs {var}SASL_USERNAME and "
                f"{var}SASL_PASSWORD"
            )
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError(f"{var}SSL_CERTFILE and {var}SSL_KEYFILE go together")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        """Properties for confluent-kafka's Producer, Consumer and AdminClient."""
        if self.protocol == "PLAINTEXT":
            return {}
        conf = {"security.protocol": self.protocol.lower()}
        if self.sasl:
            conf |= {"sasl.mechanisms": self.mechanism, "sasl.username": self.username or "",
                     "sasl.password": self.password or ""}  # fmt: skip
        if self.tls:
            if self.cafile:
                conf["ssl.ca.location"] = self.cafile
            if self.certfile and self.keyfile:
                conf |= {"ssl.certificate.location": self.certfile,
                         "ssl.key.location": self.keyfile}  # fmt: skip
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.check_hostname else "none"
            )
        return conf

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaProducer and KafkaAdminClient."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            kwargs |= {"sasl_mechanism": self.mechanism, "sasl_plain_username": self.username,
                       "sasl_plain_password": self.password}  # fmt: skip
        if self.tls:
            kwargs["ssl_check_hostname"] = self.check_hostname
            if self.cafile:
                kwargs["ssl_cafile"] = self.cafile
            if self.certfile and self.keyfile:
                kwargs |= {"ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile}
        return kwargs


PLAINTEXT = KafkaSecurity()


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The Kafka security ``settings`` configure (every client of every process uses it)."""
    password = settings.kafka_sasl_password
    return KafkaSecurity(
        protocol=settings.kafka_security_protocol.upper(),
        mechanism=settings.kafka_sasl_mechanism.upper(),
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password is not None else None,
        cafile=_path(settings.kafka_ssl_cafile),
        certfile=_path(settings.kafka_ssl_certfile),
        keyfile=_path(settings.kafka_ssl_keyfile),
        check_hostname=settings.kafka_ssl_check_hostname,
    )


def _path(value: object) -> str | None:
    return None if value is None else str(value)
