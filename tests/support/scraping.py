"""The registrations of `riverstream learn`, `serve` and `predict-worker` with the local
Prometheus (`stream.dev.services.scraped`), read from the files themselves: a state directory
configured as `services up` configures it (its Prometheus not started: the files are what is
tested), and who holds each registration."""

from __future__ import annotations

import json
from pathlib import Path

from stream.dev.services import PID_LABEL, TARGETS_DIR, prometheus_config


def as_if_services_up(state_dir: Path) -> Path:
    """Give ``state_dir`` the Prometheus configuration that `services up` writes (the processes
    started with it register themselves); its directory of targets' files."""
    home = state_dir / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    (home / "prometheus.yml").write_text(prometheus_config([], discovery=Path(TARGETS_DIR)))
    return home / TARGETS_DIR


def registrations(targets: Path) -> dict[str, tuple[str, int | None]]:
    """The targets' files in ``targets``: file name → (address, pid of the process that wrote it)."""
    found = {}
    for path in targets.glob("*.json") if targets.exists() else ():
        [group] = json.loads(path.read_text())
        pid = group.get("labels", {}).get(PID_LABEL)
        found[path.name] = (group["targets"][0], None if pid is None else int(pid))
    return found
