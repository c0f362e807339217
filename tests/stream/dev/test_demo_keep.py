"""`riverstream demo --keep` leaves a stack that another shell can use, and `demo stop` stops.

The demo runs in a stream of its own (topics and Redis prefix named by its tag), on free ports,
with random tokens. Kept, it used to print none of that, nor its pids: the README's commands
reached nothing. Now it prints the addresses, the pids and the ``export RIVERSTREAM_...`` lines,
writes them to ``<state_dir>/demos/<tag>/demo.env``, has Prometheus scrape its processes, and
``riverstream demo stop`` stops what it left. This test does what a user would: runs the printed
commands in a shell that only sourced that file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import httpx

from schemas.settings import Settings
from stream.dev.services import SERVICES, ServiceManager, pid_alive, stop_pid
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]


def test_kept_demo_is_usable_from_another_shell_and_stopped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVERSTREAM_")}
    riverstream = f"{sys.executable} -m stream"
    demo = subprocess.run(
        [*riverstream.split(), "demo", "--limit", "300", "--label-delay", "5", "--keep"],
        env={**env, "RIVERSTREAM_STATE_DIR": str(state)}, cwd=ROOT,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = demo.stdout
    pids = {name: int(pid) for name, pid in re.findall(r"(\S+) (\d+)(?:,|$)", _line(out, "pids"))}

    def shell(command: str) -> subprocess.CompletedProcess[str]:
        """``command`` in a new shell that knows only what the demo's file exports."""
        return subprocess.run(
            ["bash", "-c", f"source {env_file} && {command}"], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    try:
        assert demo.returncode == 0, out + demo.stderr
        assert set(pids) == {"learner", "api", "console", "predict-worker"}, out
        assert all(pid_alive(pid) for pid in pids.values()), out
        [tag] = re.findall(r"^left running: demo (demo-\S+)$", out, re.M)
        env_file = Path(re.findall(r"\(or: source (\S+)\):$", out, re.M)[0])
        assert env_file == state.resolve() / "demos" / tag / "demo.env"
        assert env_file.stat().st_mode & 0o777 == 0o600  # it holds the tokens
        exports = re.findall(r"^export (RIVERSTREAM_\w+)=(\S+)$", out, re.M)
        written = env_file.read_text()
        assert all(f"export {name}={value}\n" in written for name, value in exports)
        values = dict(exports)
        assert values["RIVERSTREAM_REDIS_PREFIX"] == tag
        assert values["RIVERSTREAM_TOPIC_FEATURES"] == f"{tag}.features"
        api = values["RIVERSTREAM_API_URL"]
        assert _line(out, "API").startswith(api) and _line(out, "console").startswith("http://")
        assert httpx.get(_line(out, "console").split()[0] + "healthz").status_code == 200

        # the README's commands, from the other shell
        listed = shell(f"{riverstream} snapshots list model")
        assert listed.returncode == 0 and "samples" in listed.stdout, listed.stdout + listed.stderr
        [curl] = [line.strip() for line in out.splitlines() if line.strip().startswith("curl ")]
        answered = shell(curl)
        assert answered.returncode == 0 and '"prediction"' in answered.stdout, answered
        refused = httpx.post(f"{api}/v1/models/model/predict", json={"features": {}})
        assert refused.status_code == 401  # the token printed is the one needed

        # Prometheus scrapes the demo's learner, API and worker, on their own ports
        prometheus = _line(out, "Prometheus").split()[0]
        instances = {
            path.name.split(".", 1)[1].removesuffix(".json"): json.loads(path.read_text())
            for path in (state / "prometheus" / "targets").glob(f"{tag}.*.json")
        }
        wanted = {(job, groups[0]["targets"][0]) for job, groups in instances.items()}
        assert {job for job, _ in wanted} == {
            "riverstream-learner", "riverstream-api", "riverstream-predict-worker",
        }  # fmt: skip
        wait_until(lambda: _healthy(prometheus) >= wanted, 30, "the demo's targets up",
                   detail=lambda: _healthy(prometheus))  # fmt: skip
        # the Prometheus it started watches it alone (nothing else is registered: its
        # processes are registered by the demo only), and its alert rules, evaluated, see
        # every process up
        assert {target for target, _ in _api(prometheus, "targets")} == wanted
        evaluated = dict(_api(prometheus, "rules"))
        assert evaluated[("RiverstreamLearnerDown", "")] == "ok", evaluated
        wait_until(lambda: not _down(prometheus), 30, "no alert of a process down",
                   detail=lambda: _api(prometheus, "alerts"))  # fmt: skip
        report = shell(f"{riverstream} report --out {tmp_path / 'demo.png'}")
        assert report.returncode == 0, report.stderr
        # the demo's learner is scraped: its events counter is stored (whether the report draws
        # from it depends on timing: a short run may end before the first scrape of its
        # learner, and the report then uses the trace, saying so)
        wait_until(lambda: _stored(prometheus, "riverstream_events_consumed_total"), 30,
                   "the learner's events counter stored")  # fmt: skip
        assert "throughput from" in report.stderr, report.stderr

        stopped = shell(f"{riverstream} demo stop")
        assert stopped.returncode == 0, stopped.stderr
        assert all(f"pid {pid}" in stopped.stderr for pid in pids.values()), stopped.stderr
        assert not any(pid_alive(pid) for pid in pids.values())
        assert not list((state / "prometheus" / "targets").glob(f"{tag}.*"))
        assert not (state / "demos" / tag).exists()
        # the services the demo started are stopped with it
        assert json.loads((state / "services.json").read_text()) == {}
    finally:
        for pid in pids.values():  # whatever the test did not get to stop
            stop_pid(pid, "-m stream")
        ServiceManager(Settings(state_dir=state)).down(SERVICES, purge=True)


def _line(out: str, label: str) -> str:
    """What follows ``label`` at the start of a line of ``out`` ("" if none)."""
    found = re.search(rf"^{label}\s+(.*)$", out, re.M)
    return found.group(1) if found else ""


def _stored(prometheus: str, metric: str) -> bool:
    """Whether Prometheus holds a sample of ``metric`` now."""
    query = urllib.parse.urlencode({"query": metric})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query?{query}", timeout=5) as response:
        return bool(json.loads(response.read())["data"]["result"])


def _api(prometheus: str, what: str) -> list[tuple[tuple[str, str], str]]:
    """The active ``targets`` as ((job, instance), health), the pending and firing ``alerts``
    as ((name, instance), state), or the alert ``rules`` as ((name, ""), health)."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/{what}", timeout=5) as response:
        data = json.loads(response.read())["data"]
    if what == "targets":
        return [((t["labels"]["job"], t["labels"]["instance"]), t["health"])
                for t in data["activeTargets"]]  # fmt: skip
    if what == "rules":
        return [((r["name"], ""), r["health"]) for g in data["groups"] for r in g["rules"]]
    return [((a["labels"]["alertname"], a["labels"].get("instance", "")), a["state"])
            for a in data["alerts"]]  # fmt: skip


def _down(prometheus: str) -> list[tuple[str, str]]:
    """The pending or firing alerts that a process is down (``RiverstreamLearnerDown``...)."""
    return [alert for alert, _ in _api(prometheus, "alerts") if alert[0].endswith("Down")]


def _healthy(prometheus: str) -> set[tuple[str, str]]:
    """(job, instance) of the targets Prometheus scrapes successfully."""
    return {target for target, health in _api(prometheus, "targets") if health == "up"}
