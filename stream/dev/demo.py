"""`riverstream demo`: the whole system on one machine, in one command.

Starts the local services (unless they already run), a learner, the API, the console and a
prediction worker as child processes, opens the console in a browser when there is a display,
replays a River dataset with delayed labels while asking the API for predictions, shows the
progressive metric and the version being served live, prints a summary and stops what it started
(``keep=True`` leaves it running). The learning curve is traced every ``len(dataset) /
CURVE_POINTS`` labels, so that the console and ``riverstream report`` draw a few hundred points
whatever the dataset.

The demo runs in a stream of its own (topics, consumer group and Redis prefix named by its tag,
``demo-YYYYMMDD-HHMMSS-xxxx``), on free ports, with random ingest and predict tokens. It registers
its processes' metrics ports with the local Prometheus under its tag while they run
(`ServiceManager.register_targets`); a Prometheus that the demo started scrapes only them.

Its processes run in sessions of their own (a Ctrl-C in the terminal is the demo's to handle), so
they outlive a demo that dies without stopping them. Every demo is therefore recorded in
``<state_dir>/demos/<tag>/`` from the start: ``kept.json`` (the services it started, and its own
process) before its Prometheus targets are registered, ``processes.json`` each process as soon as
it is started, by pid and a marker of its command line that names the demo (``-X
riverstream-demo=<tag>``, an option Python keeps and ignores: the pid of a process gone may be
given to another demo's). A demo that ends deletes its record after stopping what it started;
SIGTERM and SIGHUP (its terminal closed) end it so, as Ctrl-C does; each of them waits while a
process is started and recorded, and while the cleanup runs (`deferred_signals`). With
``keep=True`` the record stays (`KeptDemo`), with ``demo.env``, the ``export RIVERSTREAM_...``
lines that give another shell the demo's stream. `stop_kept` (``riverstream demo stop``) stops
what a demo kept, or left when it was killed (SIGKILL, a crash of the machine's session): its
processes, its targets, the services it started; a demo whose own process still runs is left to
it.

The three serving architectures, briefly: the API's answers during the replay (online,
synchronous: ``POST /v1/models/model/predict``, with their latency as the client measured it),
then requests through Kafka to the ``predict-worker`` and a batch ``score``
(`stream.dev.demo_architectures`).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from learners.datasets import dataset_events
from schemas.errors import RiverstreamError
from schemas.events import FeatureEvent, LabelEvent
from schemas.settings import ENV_PREFIX, Settings
from stream.dev.demo_architectures import OtherArchitectures, Spawn, run_other_architectures
from stream.dev.ports import free_ports
from stream.dev.processes import (
    EndOnSignal,
    Node,
    Processes,
    Signalled,
    deferred_signals,
    pid_alive,
    start_ticks,
)
from stream.dev.services import (
    DEMO_OPTION,
    SERVICES,
    ServiceManager,
    resolve,
    scrape_targets,
    wait_until,
)
from stream.kafka.publish import Publisher

CURVE_POINTS = 300
"""Learning-curve points the demo aims at, per model."""
DEMOS_DIR = "demos"
"""Under the state directory: a directory per demo running, left running (``--keep``) or dead
without its cleanup, named by its tag."""
ENV_FILE = "demo.env"
KEPT_FILE = "kept.json"
"""In a demo's directory: the services it started and its own process (``pid`` and its
``started``, `start_ticks`)."""
KEPT_SETTINGS = (
    "state_dir", "redis_prefix", "topic_features", "topic_labels", "topic_dlq", "topic_requests",
    "topic_predictions", "predict_group", "ingest_token", "predict_token",
)  # fmt: skip
"""What another shell needs to use a kept demo's stream (addresses and the snapshot key are
found in the state directory, as for any command); its ports are left out, so that a
``riverstream serve`` or ``console`` started there does not collide with the demo's."""
MODEL = "model"
"""The name the demo's model is learned and served under."""


@dataclass
class DemoOptions:
    dataset: str = "Phishing"
    model: str = "logreg"
    label_delay: str = "20"
    limit: int | None = None
    rate: float = 1500.0
    seed: int = 42
    keep: bool = False


@dataclass
class DemoSummary:
    events: int = 0
    samples_learned: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    versions_seen: list[int] = field(default_factory=list)
    predictions: int = 0
    failed_predictions: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    api_url: str = ""
    console_url: str = ""
    prometheus_url: str | None = None
    other: OtherArchitectures = field(default_factory=OtherArchitectures)
    kept: KeptDemo | None = None
    """What was left running (``keep=True``)."""

    def latency(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class KeptDemo:
    """What ``riverstream demo --keep`` left running, and how to use it from another shell."""

    tag: str
    api_url: str
    console_url: str
    prometheus_url: str | None
    pids: dict[str, int]
    logs: str
    exports: dict[str, str]
    """``RIVERSTREAM_*`` variable → value: the demo's stream (`KEPT_SETTINGS`) and, for curl,
    ``RIVERSTREAM_API_URL`` (not a setting)."""
    services: tuple[str, ...]
    """The services the demo started (which `stop_kept` stops too)."""
    env_file: Path
    example: dict[str, Any] = field(default_factory=dict)
    """Features of a predict request, for the curl example."""


def kept_lines(kept: KeptDemo) -> list[str]:
    """What the demo prints when it leaves its processes running; `kept_env` writes the same."""
    curl = (
        'curl -s "$RIVERSTREAM_API_URL/v1/models/model/predict" '
        '-H "Authorization: Bearer $RIVERSTREAM_PREDICT_TOKEN" '
        f"-d {shlex.quote(json.dumps({'features': kept.example}))}"
    )
    pids = ", ".join(f"{name} {pid}" for name, pid in kept.pids.items()) or "none running"
    services = (
        f"and {', '.join(kept.services)}, which the demo started"
        if kept.services
        else "the services were running before and stay"
    )
    return [
        f"left running: demo {kept.tag}",
        f"API           {kept.api_url}  (docs: {kept.api_url}/docs)",
        f"console       {kept.console_url}",
        f"Prometheus    {kept.prometheus_url or 'not running'}  "
        "(scrapes the demo's learner, API and worker)",
        f"pids          {pids}",
        f"logs          {kept.logs}",
        f"settings for another shell (or: source {kept.env_file}):",
        *(f"export {name}={shlex.quote(value)}" for name, value in kept.exports.items()),
        "then, for example:",
        "  riverstream snapshots list model",
        "  riverstream report --out demo.png",
        f"  {curl}",
        f"stop with: riverstream demo stop   (the pids above, {services})",
    ]


def kept_env(kept: KeptDemo) -> str:
    """`kept_lines` as a file for ``source``: the exports as they are, the rest as comments."""
    lines = kept_lines(kept)
    return "".join(f"{s}\n" if s.startswith("export ") else f"# {s}\n" for s in lines)


def stop_kept(settings: Settings) -> list[str]:
    """Stop every demo left running (``riverstream demo stop``), kept or killed: its processes by
    pid (each only if it still runs its command, which names the demo), its Prometheus targets,
    and the services it started; what was stopped, a line per demo. A demo whose own process
    still runs is left alone: it stops what it started when it ends, and the services stay up
    while it runs (a demo reuses the services that a killed one started). A folder without a
    record yet is a demo starting (its record is written first): left alone too."""
    state = settings.state_dir.resolve()
    root = state / DEMOS_DIR
    homes = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
    manager = ServiceManager(settings)
    said: list[str] = []
    services: set[str] = set()
    live: list[str] = []
    for home in homes:
        record = _read_record(home)
        if not record:  # a demo starting: nothing is recorded before its record
            continue
        owner = record.get("pid")
        if isinstance(owner, int) and _runs(owner, record.get("started")):
            said.append(
                f"demo {home.name}: still running (pid {owner}); it stops what it started when "
                f"it ends (Ctrl-C, or kill {owner})"
            )
            live.append(home.name)
            continue
        processes = Processes(home)
        nodes = processes.records()
        stopped = processes.stop()
        names = ", ".join(f"{name} (pid {nodes[name].pid})" for name in stopped)
        said.append(f"demo {home.name}: stopped {names or 'nothing (no process was running)'}")
        manager.unregister_targets(home.name)
        services |= set(record.get("services", []))
        shutil.rmtree(home)
    if services and live:
        said.append(
            f"services left running ({', '.join(sorted(services))}): demo {', '.join(live)} "
            "uses them; `riverstream services down` stops them"
        )
        services = set()
    down = manager.down(tuple(s for s in SERVICES if s in services)) if services else []
    if down:
        said.append(f"services the demo started: stopped {', '.join(down)}")
    return said


def _read_record(home: Path) -> dict[str, Any]:
    """A demo's ``kept.json`` ({} if it has none yet: a demo starting, which writes it first)."""
    path = home / KEPT_FILE
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _runs(pid: int, started: object) -> bool:
    """Whether process ``pid``, started at ``started`` (`start_ticks`), still runs (the pid of a
    process gone may have been given to another)."""
    return pid_alive(pid) and (started is None or start_ticks(pid) == started)


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_environment()}


class Demo:
    def __init__(self, options: DemoOptions, log: Callable[[str], None] = lambda _m: None) -> None:
        self.options = options
        self.log = log
        self.children: list[subprocess.Popen[bytes]] = []
        self.started_services: tuple[str, ...] = ()
        self.base = Settings()
        self.tag = ""
        self.home: Path | None = None
        """``<state_dir>/demos/<tag>``, this demo's record (see the module's docstring)."""
        self._signals = EndOnSignal()
        self._logs: dict[str, Path] = {}
        self._named: dict[str, tuple[subprocess.Popen[bytes], list[str], int]] = {}
        """The long-running children by name: process, arguments and the port it serves."""

    def prepare(self) -> Settings:
        manager = ServiceManager(self.base, log=self.log)
        running = set(manager.running())
        self.started_services = tuple(s for s in SERVICES if s not in running)
        manager.up(SERVICES)
        self.tag = tag = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        serve, console, learner_metrics, predict_metrics = free_ports(4)  # distinct
        settings = resolve(self.base).model_copy(
            update={
                "topic_features": f"{tag}.features",
                "topic_labels": f"{tag}.labels",
                "topic_dlq": f"{tag}.dlq",
                "topic_requests": f"{tag}.requests",
                "topic_predictions": f"{tag}.predictions",
                "predict_group": f"{tag}.predict",
                "redis_prefix": tag,
                # The closed loop's routes are closed, as in production (see the README).
                "ingest_token": SecretStr(secrets.token_urlsafe(24)),
                "predict_token": SecretStr(secrets.token_urlsafe(24)),
                "snapshot_every_labels": 200,
                "snapshot_every_seconds": 1.0,
                "serve_port": serve,
                "console_port": console,
                "learner_metrics_port": learner_metrics,
                "predict_metrics_port": predict_metrics,
                "watermark_idle_grace": 1.0,
            }
        )
        state = self.base.state_dir.resolve()
        with deferred_signals():  # recorded before anything needs `stop_kept` to undo it
            self.home = state / DEMOS_DIR / tag
            self._write_record()
        self.log(
            f"demo {tag}: recorded in {self.home} (for `riverstream demo stop`, should it die), "
            f"logs in {state / tag}.*.log"
        )
        # scraped from the start: `riverstream report` and the alerts see the whole run
        manager.register_targets(tag, scrape_targets(settings))
        return settings

    def _write_record(self) -> None:
        """Write ``kept.json``: the services this demo started, and its own process."""
        assert self.home is not None
        self.home.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        record = {"services": list(self.started_services), "pid": pid, "started": start_ticks(pid)}
        tmp = self.home / f".{KEPT_FILE}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.home / KEPT_FILE)

    def _spawn(
        self, settings: Settings, args: list[str], log_name: str, port: int
    ) -> subprocess.Popen[bytes]:
        """Start ``riverstream ARGS`` (its output into ``<state_dir>/<tag>.<log_name>.log``) and
        record it in `home` at once, its marker naming this demo."""
        log_path = Path(settings.state_dir) / f"{settings.redis_prefix}.{log_name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = ["-X", f"{DEMO_OPTION}={self.tag}", "-m", "stream", *args]
        assert self.home is not None  # `prepare` has run
        with deferred_signals(), log_path.open("ab") as handle:
            proc = subprocess.Popen(
                [sys.executable, *command],
                env=_child_env(settings),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.children.append(proc)
            marker = " ".join(command)  # as in /proc/PID/cmdline
            Processes(self.home).add(Node(log_name, proc.pid, port, str(log_path), marker))
        self._logs[log_name] = log_path
        self._named[log_name] = (proc, args, port)
        return proc

    def _spawner(self, settings: Settings) -> Spawn:
        """`_spawn` for `run_other_architectures`: a process that serves no port."""

        def spawn(args: list[str], log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
            return self._spawn(settings, args, log_name, 0), self._logs[log_name]

        return spawn

    def run(self, on_progress: Callable[[int, int, dict[str, Any]], None]) -> DemoSummary:
        """Run the demo (see the module's docstring); SIGTERM and SIGHUP end it as an exception,
        `Signalled`, once it has stopped what it started (or recorded it, ``keep=True``)."""
        with self._signals:
            return self._run(on_progress)

    def _run(self, on_progress: Callable[[int, int, dict[str, Any]], None]) -> DemoSummary:
        o = self.options
        summary = DemoSummary()
        settings: Settings | None = None
        features: list[FeatureEvent] = []
        client: httpx.Client | None = None
        try:
            settings = self.prepare()
            summary.prometheus_url = settings.prometheus_url
            events = list(
                dataset_events(o.dataset, label_delay=o.label_delay, limit=o.limit, seed=o.seed)
            )
            features = [e for e in events if isinstance(e, FeatureEvent)]
            every = max(1, len(features) // CURVE_POINTS)
            settings = settings.model_copy(update={"trace_every_labels": every})
            summary.events = len(events)
            api = f"http://127.0.0.1:{settings.serve_port}"
            summary.api_url = api
            name = MODEL
            learner = self._spawn(
                settings, ["learn", "--model", f"{name}={o.model}"], "learner",
                settings.learner_metrics_port,
            )  # fmt: skip
            self._spawn(
                settings, ["serve", "--port", str(settings.serve_port)], "api", settings.serve_port
            )
            summary.console_url = f"http://127.0.0.1:{settings.console_port}/"
            token = settings.predict_token.get_secret_value() if settings.predict_token else ""
            client = httpx.Client(
                base_url=api, timeout=5, headers={"Authorization": f"Bearer {token}"}
            )
            self._replay(settings, client, events, features, summary, on_progress, learner)
            self._signals.check()
            run_other_architectures(
                settings, client, name, features, summary.other, spawn=self._spawner(settings),
                worker_log=self._logs["predict-worker"], tail=self._tail,
            )  # fmt: skip
            if o.keep:
                summary.kept = self.keep(settings, summary, features)
            return summary
        except Signalled as exc:
            self.log(f"{exc}: the demo stops what it started")
            raise
        finally:
            with deferred_signals():  # a signal now waits for the cleanup's end
                if client is not None:
                    client.close()
                if not o.keep or settings is None:
                    self.stop()
                elif summary.kept is None:  # failed: what runs can still be looked at, and stopped
                    kept = self.keep(settings, summary, features)
                    self.log(
                        f"the demo failed; left running as asked: see {kept.env_file}, "
                        "stop with `riverstream demo stop`"
                    )

    def _replay(
        self,
        settings: Settings,
        client: httpx.Client,
        events: list[FeatureEvent | LabelEvent],
        features: list[FeatureEvent],
        summary: DemoSummary,
        on_progress: Callable[[int, int, dict[str, Any]], None],
        learner: subprocess.Popen[bytes],
    ) -> None:
        """Start the console and the worker, replay ``events`` while asking the API for
        predictions, until the learner has learned every label. Ended by an exception (a
        signal), the replay stops first: its producer is closed while Kafka still runs."""
        o, name = self.options, MODEL
        wait_until(lambda: client.get("/healthz").status_code == 200, 60, "the API")
        # started once the API answers: three processes importing River at once on a small
        # machine slow each other down
        console_args = ["console", "--port", str(settings.console_port)]
        self._spawn(settings, console_args, "console", settings.console_port)
        wait_until(lambda: _answers(summary.console_url + "healthz"), 60, "the console")
        self.log(f"console: {summary.console_url}")
        # joins its consumer group and follows the model while the replay runs
        worker_args = ["predict-worker", "--report-every", "0.5"]
        self._spawn(settings, worker_args, "predict-worker", settings.predict_metrics_port)
        if _has_display():
            webbrowser.open(summary.console_url)
        stop = threading.Event()
        publisher_done = threading.Event()
        published = [0]

        def publish() -> None:
            publisher = Publisher(settings)
            try:
                publisher.publish_events(
                    itertools.takewhile(lambda _: not stop.is_set(), events),
                    rate=o.rate,
                    progress=lambda n: published.__setitem__(0, published[0] + n),
                )
            finally:
                publisher.close()
                publisher_done.set()

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        try:
            self._follow(client, events, features, summary, on_progress, published, publisher_done)
        except BaseException:  # a failure, or a signal: the publisher stops and closes first,
            stop.set()  # while the Kafka it writes to still runs
            thread.join(timeout=30)
            raise
        thread.join(timeout=30)
        info = self._poll_model(client, name, summary)
        summary.samples_learned = int(info.get("samples_learned", 0))
        summary.metrics = dict(info.get("metrics", {}))
        if learner.poll() is not None:
            raise RiverstreamError(
                f"the learner stopped unexpectedly; its log ends with:\n{self._tail('learner')}"
            )

    def _follow(
        self,
        client: httpx.Client,
        events: list[FeatureEvent | LabelEvent],
        features: list[FeatureEvent],
        summary: DemoSummary,
        on_progress: Callable[[int, int, dict[str, Any]], None],
        published: list[int],
        publisher_done: threading.Event,
    ) -> None:
        """Ask the API for predictions and show the progress while the events are published,
        until the learner has learned every label (or a deadline)."""
        o, name = self.options, MODEL
        i = 0
        info: dict[str, Any] = {}
        deadline = time.monotonic() + max(120.0, 3 * len(events) / o.rate)
        while time.monotonic() < deadline:
            self._signals.check()  # a signal swallowed where it came (an import's lock, say)
            info = self._poll_model(client, name, summary)
            x = features[i % len(features)].features
            i += 1
            start = time.perf_counter()
            try:
                response = client.post(f"/v1/models/{name}/predict", json={"features": x})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if info:  # predictions count once a model is being served
                summary.predictions += 1
                summary.latencies_ms.append((time.perf_counter() - start) * 1000)
                summary.failed_predictions += int(not ok)
            on_progress(published[0], len(events), info)
            if publisher_done.is_set() and info.get("samples_learned", 0) >= len(features):
                break
            time.sleep(0.02)  # pacing the demo's own requests, not synchronisation

    def keep(
        self, settings: Settings, summary: DemoSummary, features: list[FeatureEvent]
    ) -> KeptDemo:
        """Leave what runs recorded in ``<state_dir>/demos/<tag>/`` (for `stop_kept`: each
        process was recorded as it started) and write its ``demo.env`` (owner-only: it holds
        the tokens)."""
        state = settings.state_dir.resolve()
        assert self.home is not None  # `prepare` has run
        home = self.home
        pids = {name: proc.pid for name, (proc, _, _) in self._named.items() if proc.poll() is None}
        environment = settings.model_copy(update={"state_dir": state}).to_environment()
        exports = {
            variable: environment[variable]
            for variable in (f"{ENV_PREFIX}{name.upper()}" for name in KEPT_SETTINGS)
            if variable in environment
        }
        kept = KeptDemo(
            tag=self.tag,
            api_url=summary.api_url,
            console_url=summary.console_url,
            prometheus_url=settings.prometheus_url,
            pids=pids,
            logs=str(state / f"{self.tag}.*.log"),
            exports={**exports, f"{ENV_PREFIX}API_URL": summary.api_url},
            services=self.started_services,
            env_file=home / ENV_FILE,
            example=dict(features[0].features) if features else {},
        )
        env_file = kept.env_file
        env_file.touch(mode=0o600)
        env_file.chmod(0o600)
        env_file.write_text(kept_env(kept))
        return kept

    def _tail(self, name: str, lines: int = 30) -> str:
        path = self._logs.get(name)
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _poll_model(self, client: httpx.Client, name: str, summary: DemoSummary) -> dict[str, Any]:
        try:
            response = client.get(f"/v1/models/{name}")
        except httpx.HTTPError:
            return {}
        if response.status_code != 200:
            return {}
        info: dict[str, Any] = response.json()
        version = info.get("version")
        if version is not None and (
            not summary.versions_seen or summary.versions_seen[-1] != version
        ):
            summary.versions_seen.append(int(version))
        return info

    def stop(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        manager = ServiceManager(self.base)
        if self.tag:
            manager.unregister_targets(self.tag)
        if self.started_services:
            manager.down(self.started_services)
        if self.home is not None:  # last: until then, `stop_kept` could finish the job
            shutil.rmtree(self.home, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _has_display() -> bool:
    """A graphical browser can be opened (never a text browser taking over the terminal)."""
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def describe(summary: DemoSummary) -> list[str]:
    other = summary.other
    metric = ", ".join(f"{k} {v:.4f}" for k, v in summary.metrics.items()) or "n/a"
    p50 = summary.latency(0.5)
    p99 = summary.latency(0.99)
    mean = statistics.fmean(summary.latencies_ms) if summary.latencies_ms else float("nan")
    waits = sorted(other.async_latencies_ms) or [float("nan")]
    return [
        f"events published      {summary.events}",
        f"samples learned       {summary.samples_learned}",
        f"progressive metric    {metric}",
        f"versions served       {len(summary.versions_seen)} "
        f"(first {summary.versions_seen[:1]}, last {summary.versions_seen[-1:]})",
        f"predictions asked     {summary.predictions} ({summary.failed_predictions} failed)",
        f"latency (client)      p50 {p50:.2f} ms, p99 {p99:.2f} ms, mean {mean:.2f} ms",
        "serving architectures",
        f"online, synchronous   {summary.predictions} answers over HTTP "
        f"({summary.failed_predictions} failed), p50 {p50:.2f} ms",
        f"asynchronous, Kafka   {other.async_answered} of {other.async_requests} requests "
        f"answered by the predict-worker",
        f"                      versions {other.async_versions}, request → answer p50 "
        f"{waits[len(waits) // 2]:.1f} ms",
        f"batch, score          {other.batch_scored} rows scored ({other.batch_rejected} "
        f"rejected), versions {other.batch_versions}",
        f"                      into {other.batch_output}",
        f"                      and Redis: {other.batch_lookup}",
    ]  # the console's address only where it still runs: in `kept_lines`


__all__ = [
    "Demo", "DemoOptions", "DemoSummary", "KeptDemo", "describe", "kept_env", "kept_lines",
    "stop_kept",
]  # fmt: skip
