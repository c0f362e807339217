"""Pure: the configuration `stream.dev.redis_ha.RedisHA.sentinel_config` gives its Sentinels,
plain or with TLS and an ACL user (the servers get the same TLS and ACL lines; the cross-host
test, tests/stream/dev/test_netns.py, runs them all)."""

from __future__ import annotations

from pathlib import Path

from stream.dev.processes import Host
from stream.dev.redis_ha import SENTINEL_MASTER, RedisHA
from stream.dev.secure import Certificates


def lines(ha: RedisHA, role: str) -> list[str]:
    host, port = ha.address(role)
    return ha.sentinel_config(host, port, Path("/x")).splitlines()


def test_plain_sentinels_monitor_the_primary_on_its_host(tmp_path: Path) -> None:
    ha = RedisHA(tmp_path, hosts={"primary": Host("10.77.0.11"), "sentinel-3": Host("10.77.0.13")})
    config = lines(ha, "sentinel-3")
    primary = ha.ports["primary"]
    assert f"sentinel monitor {SENTINEL_MASTER} 10.77.0.11 {primary} 2" in config
    assert "bind 10.77.0.13" in config and "protected-mode no" in config
    assert f"port {ha.ports['sentinel-3']}" in config
    assert not [line for line in config if line.startswith(("tls-", "user ", "sentinel auth"))]
    assert ha.url("replica").startswith("redis://127.0.0.1:")  # roles without a host: local
    assert ha.sentinels.split(",")[2] == f"10.77.0.13:{ha.ports['sentinel-3']}"


def test_tls_and_a_user_leave_no_plain_port_and_no_default_user(tmp_path: Path) -> None:
    certs = Certificates(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    ha = RedisHA(tmp_path / "ha", tls=certs, user=("app", "pw"))
    config = lines(ha, "sentinel-1")
    assert "port 0" in config and f"tls-port {ha.ports['sentinel-1']}" in config
    assert "tls-replication yes" in config  # to the servers and to the other Sentinels
    assert "user default off" in config and "user app on >pw ~* &* +@all" in config
    for line in (f"sentinel auth-user {SENTINEL_MASTER} app",
                 f"sentinel auth-pass {SENTINEL_MASTER} pw",
                 "sentinel sentinel-user app", "sentinel sentinel-pass pw"):  # fmt: skip
        assert line in config
    assert ha.url("primary").startswith("rediss://")
