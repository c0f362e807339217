"""The learning curve in Redis: per model, a capped stream of progressive metrics, written with
the snapshots so that it has the checkpoints' semantics.

**What a point is.** Every ``RIVERSTREAM_TRACE_EVERY_LABELS`` joined labels the learning core
marks each model's metrics (`learners.core.CurveMark`); the learner stamps the mark with the
wall-clock time and keeps it until a snapshot covers it. A point is the stream entry
``P:model:NAME:trace`` with id ``<labels>-0`` (the label count *is* the id, so ids are unique
and ordered, and a range of label counts is an ``XRANGE``) and the fields ``event_time`` (of that
label), ``wall_time`` (when the learner processed it, unix seconds), ``samples`` (samples the
model had learned) and ``metrics`` (JSON, a non-finite value as ``null``). The stream is capped
with ``MAXLEN ~ RIVERSTREAM_TRACE_MAX_POINTS``: the oldest points go first.

**When a point is written: with the snapshot that covers it.** `TRACE_WRITE` runs inside the
snapshot's MULTI/EXEC (`stream.store.snapshots.SnapshotStore.write`), so a point becomes visible
together with the version whose checkpoint has learned its label, never before:

- *A crash* loses only points not covered by a checkpoint, and the restarted learner marks them
  again from that checkpoint (marks depend on the label count alone). A point is added only if
  its label count is above the stream's last one: writing the same points twice (a snapshot
  reported failed after EXEC, then retried) adds nothing. There are never duplicates.
- *A replay* (``snapshots rollback --resume replay``) rewinds the learner to an older
  checkpoint, and so the curve. Each checkpoint carries the trace's **lineage**: ``[[start,
  epoch], ...]``, the label counts at which a replay started a new epoch (the first is ``[0,
  <random id>]``). The stream keeps the lineage of its points (``P:model:NAME:trace:lineage``).
  Writing a snapshot first deletes the entries past the label count where the two lineages part
  (and past the snapshot's own count), then appends: the curve shown is always the history of
  the checkpoint last written, and the points of an abandoned timeline are gone. Points deleted
  by an earlier rewind are not recreated if a later replay jumps forward past them (the curve
  has a gap there, not wrong points).
- *A skip rollback* keeps the label count: the model's metrics jump back to the target's, and
  the curve shows the jump at that count.

The script never fails a snapshot: a point Redis refuses is left out. Readers:
`stream.store.trace_reader.TraceReader`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from stream.store.keys import RedisKeys

Lineage = list[tuple[int, str]]
"""``(start label count, epoch id)``, ascending: the points past ``start`` (up to the next
start) were learned in that epoch."""

TRACE_WRITE = """
-- KEYS[1]: the trace stream, KEYS[2]: its lineage (JSON [[start, epoch], ...])
-- ARGV[1]: labels covered by the snapshot, ARGV[2]: MAXLEN, ARGV[3]: the snapshot's lineage
-- ARGV[4..]: points, five values each: labels, event_time, wall_time, samples, metrics (JSON)
local covered = tonumber(ARGV[1])
local keep = covered
local raw = redis.call('GET', KEYS[2])
if raw then
  local ok_old, old = pcall(cjson.decode, raw)
  local new = cjson.decode(ARGV[3])
  if not ok_old or type(old) ~= 'table' then old = {} end
  for _, entry in ipairs(old) do  -- an entry that is no [start, epoch]: unreadable as a whole
    if type(entry) ~= 'table' or type(entry[1]) ~= 'number' then old = {} break end
  end
  local i = 1
  while old[i] ~= nil or new[i] ~= nil do
    local a, b = old[i], new[i]
    if a == nil or b == nil or a[1] ~= b[1] or a[2] ~= b[2] then
      local parted = math.huge
      if a ~= nil then parted = math.min(parted, a[1]) end
      if b ~= nil then parted = math.min(parted, b[1]) end
      keep = math.min(keep, parted)
      break
    end
    i = i + 1
  end
end
local exists = redis.call('EXISTS', KEYS[1]) == 1
local last = -1
if exists then
  local stale = redis.call('XRANGE', KEYS[1], string.format('%d', keep + 1), '+')
  for _, entry in ipairs(stale) do redis.call('XDEL', KEYS[1], entry[1]) end
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #top > 0 then
    last = tonumber(string.match(top[1][1], '^(%d+)'))
    redis.pcall('XSETID', KEYS[1], top[1][1])
  else
    redis.pcall('XSETID', KEYS[1], '0-0')
  end
end
local added = 0
for i = 4, #ARGV, 5 do
  local labels = tonumber(ARGV[i])
  if labels > last and labels <= covered then
    local reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-0',
      'event_time', ARGV[i + 1], 'wall_time', ARGV[i + 2], 'samples', ARGV[i + 3],
      'metrics', ARGV[i + 4])
    if type(reply) ~= 'table' or reply.err == nil then
      last = labels
      added = added + 1
    end
  end
end
redis.call('SET', KEYS[2], ARGV[3])
return added
"""


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class TracePoint:
    """One point of a model's learning curve."""

    labels: int
    """Labels joined by the learner (the x of the curve; the entry id)."""
    event_time: float
    wall_time: float
    samples: int
    """Samples this model had learned."""
    metrics: dict[str, float | None] = field(default_factory=dict)

    def fields(self) -> list[str]:
        """The four values after the label count, as `TRACE_WRITE` takes them.

        >>> TracePoint(10, 5.0, 1700000000.25, 10, {"Accuracy": 0.5, "R2": math.nan}).fields()
        ['5.0', '1700000000.25', '10', '{"Accuracy":0.5,"R2":null}']
        """
        metrics = {name: _finite(value) for name, value in self.metrics.items()}
        return [
            repr(float(self.event_time)),
            repr(float(self.wall_time)),
            str(int(self.samples)),
            json.dumps(metrics, separators=(",", ":"), allow_nan=False),
        ]

    @classmethod
    def from_entry(
        cls, entry_id: bytes | str, values: Mapping[bytes | str, bytes | str]
    ) -> TracePoint:
        """A point from an ``XRANGE`` entry.

        >>> TracePoint.from_entry(b"10-0", {b"event_time": b"5.0", b"wall_time": b"7.5",
        ...     b"samples": b"9", b"metrics": b'{"MAE": 1.5}'})
        TracePoint(labels=10, event_time=5.0, wall_time=7.5, samples=9, metrics={'MAE': 1.5})
        """
        text = {_text(k): _text(v) for k, v in values.items()}
        raw = json.loads(text.get("metrics") or "{}")
        return cls(
            labels=int(_text(entry_id).partition("-")[0]),
            event_time=float(text.get("event_time", "nan")),
            wall_time=float(text.get("wall_time", "nan")),
            samples=int(text.get("samples", "0")),
            metrics={str(k): _finite(v) for k, v in raw.items()} if isinstance(raw, dict) else {},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite metrics are None already)."""
        return {
            "labels": self.labels,
            "event_time": self.event_time,
            "wall_time": self.wall_time,
            "samples": self.samples,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class TraceWrite:
    """What a snapshot writes of the curve: every model's points up to ``covered`` labels."""

    covered: int
    """Labels joined by the checkpoint of the snapshot."""
    lineage: Lineage
    points: Mapping[str, Sequence[TracePoint]]
    max_points: int

    def arguments(self, model: str) -> list[str | int]:
        """``ARGV`` of `TRACE_WRITE` for ``model``.

        >>> w = TraceWrite(20, [(0, "a")], {"m": [TracePoint(10, 1.0, 2.0, 10, {})]}, 100)
        >>> w.arguments("m")
        [20, 100, '[[0,"a"]]', 10, '1.0', '2.0', '10', '{}']
        """
        args: list[str | int] = [
            self.covered,
            self.max_points,
            json.dumps([[start, epoch] for start, epoch in self.lineage], separators=(",", ":")),
        ]
        for point in self.points.get(model, ()):
            if point.labels <= self.covered:
                args += [point.labels, *point.fields()]
        return args


def queue_trace(
    tx: redis.client.Pipeline, keys: RedisKeys, write: TraceWrite, models: Iterable[str]
) -> None:
    """Queue `TRACE_WRITE` for every model of a snapshot into its transaction ``tx`` (by EVAL:
    no SCRIPT EXISTS round trip before the MULTI)."""
    for model in models:
        tx.eval(
            TRACE_WRITE, 2, keys.trace(model), keys.trace_lineage(model), *write.arguments(model)
        )


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
