"""Redis connections from settings: one primary or Sentinels, and where readers read.

Every riverstream process opens Redis through `redis_client`, so every one of them follows the
same deployment:

- **One Redis** (``RIVERSTREAM_REDIS_URL``): the client of that URL.
- **Sentinels** (``RIVERSTREAM_REDIS_SENTINELS=host:port,...`` and
  ``RIVERSTREAM_REDIS_SENTINEL_MASTER``): redis-py's `redis.sentinel.Sentinel` asks them for the
  primary, and asks again whenever a connection fails, so a client follows a failover by
  itself: the learner rides out the seconds without a primary (`stream.learner.outage`), the
  API keeps answering from the models it holds (`stream.store.follower`). ``REDIS_URL``, if set,
  only contributes its database number, user and password.
- **Security** (``RIVERSTREAM_REDIS_USERNAME`` / ``_PASSWORD``: an ACL user, overriding the
  URL's; a ``rediss://`` URL: TLS, checked against ``RIVERSTREAM_REDIS_SSL_CAFILE``, with a
  client certificate if ``_SSL_CERTFILE`` / ``_SSL_KEYFILE`` are set). With Sentinels, a
  ``rediss://`` ``REDIS_URL`` makes every connection TLS, to the Sentinels as to the servers,
  and the settings' user and password are given to both (a URL's only to the servers).
- **Readers on a replica** (``RIVERSTREAM_REDIS_READ_URL``, for ``read=True`` clients: the
  API): reads go to a replica's URL, or with Sentinels to ``replica`` (one they name, else the
  primary). The snapshot notifications are subscribed on the same connection: a replica relays
  every PUBLISH of its primary through the replication stream, in order after the writes before
  it, so a reader that hears of a version can already read it there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

from schemas.errors import ConfigError

if TYPE_CHECKING:
    from schemas.settings import Settings

REPLICA = "replica"
"""``RIVERSTREAM_REDIS_READ_URL`` value that reads from a replica the Sentinels name."""


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``host:port[,host:port]`` → pairs (empty text: none).

    >>> parse_addresses("127.0.0.1:26379, [::1]:26380")
    [('127.0.0.1', 26379), ('::1', 26380)]
    >>> parse_addresses("")
    []
    """
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"RIVERSTREAM_REDIS_SENTINELS: {item!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def redis_configured(settings: Settings) -> bool:
    """Whether ``settings`` say where Redis is (a URL or Sentinels)."""
    return bool(settings.redis_url or settings.redis_sentinels.strip())


def redis_client(settings: Settings, *, read: bool = False, **options: Any) -> redis.Redis:
    """A client (``decode_responses`` off) of the primary, or with ``read`` of the configured
    read replica; ``options``: connection options (timeouts, retry, health checks)."""
    sentinels = parse_addresses(settings.redis_sentinels)
    if sentinels:
        auth: dict[str, Any] = {}
        if settings.redis_url:
            parsed = parse_url(settings.redis_url)
            auth = {k: parsed[k] for k in ("db", "username", "password") if parsed.get(k)}
        # the settings' user and TLS go to the Sentinels too (the URL's user does not)
        secure = security(settings, settings.redis_url or "")
        if (settings.redis_url or "").startswith("rediss://"):
            secure["ssl"] = True  # the Sentinels' pools are told; a URL tells the others
        auth |= secure
        # Sentinels answer in milliseconds; a dead one must not hold a failover for long.
        probe = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, **secure}
        sentinel = Sentinel(sentinels, sentinel_kwargs=probe, **auth)
        name = settings.redis_sentinel_master
        if read and settings.redis_read_url == REPLICA:
            return sentinel.slave_for(name, **options)
        return sentinel.master_for(name, **options)
    url = settings.redis_read_url if read and settings.redis_read_url else settings.redis_url
    if not url:
        raise ConfigError(
            "no Redis address: set RIVERSTREAM_REDIS_URL (or RIVERSTREAM_REDIS_SENTINELS) or run "
            "`riverstream services up`"
        )
    if url == REPLICA:
        raise ConfigError("RIVERSTREAM_REDIS_READ_URL=replica needs RIVERSTREAM_REDIS_SENTINELS")
    return redis.Redis.from_url(url, **security(settings, url), **options)


def security(settings: Settings, url: str) -> dict[str, Any]:
    """Connection options for the ACL user and TLS that ``settings`` configure, for ``url``
    (``rediss://``: TLS).

    >>> from schemas.settings import Settings
    >>> s = Settings(redis_username="app", redis_password="pw", redis_ssl_cafile="/ca.pem")
    >>> sorted(security(s, "rediss://h:6380/0").items())  # doctest: +NORMALIZE_WHITESPACE
    [('password', 'pw'), ('ssl_ca_certs', '/ca.pem'), ('ssl_cert_reqs', 'required'),
     ('username', 'app')]
    >>> security(Settings(), "redis://h:6379/0")
    {}
    """
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        if settings.redis_ssl_cafile is not None:
            options["ssl_ca_certs"] = str(settings.redis_ssl_cafile)
        if settings.redis_ssl_certfile is not None and settings.redis_ssl_keyfile is not None:
            options["ssl_certfile"] = str(settings.redis_ssl_certfile)
            options["ssl_keyfile"] = str(settings.redis_ssl_keyfile)
    elif settings.redis_ssl_cafile is not None:
        raise ConfigError(
            "RIVERSTREAM_REDIS_SSL_CAFILE is set but the Redis URL is not rediss:// (TLS)"
        )
    return options
