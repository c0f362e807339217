"""Join bookkeeping: orphans, expiry, late events, duplicates and bounded memory."""

from __future__ import annotations

import math
import pickle
import random
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from learners.core import LearningCore
from learners.datasets import dataset_events
from learners.join import EventTimeJoin
from learners.specs import ModelSpec
from schemas.events import FeatureEvent, LabelEvent

F, L = (0, 0), (1, 0)


def feature(i: int, time: float | None = None) -> FeatureEvent:
    return FeatureEvent(str(i), float(i if time is None else time), {"x": float(i)})


def label(i: int, time: float, y: bool = True) -> LabelEvent:
    return LabelEvent(str(i), float(time), y)


def released(join: EventTimeJoin, watermark: float) -> list[tuple[str, str]]:
    return [(p.id, "L" if lab else "F") for p, lab in join.steps(watermark)]


def test_nothing_is_processed_before_the_watermark_passes_it():
    join = EventTimeJoin()
    join.push_feature(feature(0), F, 0)
    join.push_label(label(0, 0), L, 0)
    assert released(join, 0.0) == []
    assert released(join, 0.5) == [("0", "F"), ("0", "L")]


def test_label_waits_until_the_next_feature_time():
    join = EventTimeJoin()
    join.push_feature(feature(0), F, 0)
    join.push_label(label(0, 5), L, 0)
    join.push_feature(feature(1, 5), F, 1)
    # at equal times the label comes before the feature
    assert released(join, 10) == [("0", "F"), ("0", "L"), ("1", "F")]


def test_early_label_waits_as_orphan_and_joins_its_feature():
    join = EventTimeJoin()
    join.push_label(label(7, 1), L, 0)
    assert released(join, 2) == []
    assert join.counters.pending_labels == 1
    join.push_feature(feature(7, 3), F, 0)
    assert released(join, 4) == [("7", "F"), ("7", "L")]
    assert join.counters.labels_joined == 1
    assert join.counters.pending_labels == join.counters.orphan_labels == 0


def test_unknown_label_becomes_an_orphan_after_the_ttl():
    join = EventTimeJoin(ttl=10)
    join.push_label(label(99, 0), L, 0)
    join.push_feature(feature(1, 5), F, 0)
    released(join, 6)
    assert join.counters.pending_labels == 1
    join.push_feature(feature(2, 11), F, 1)
    released(join, 12)
    assert join.counters.orphan_labels == 1
    assert join.counters.pending_labels == 0


def test_feature_without_label_expires_and_its_late_label_is_an_orphan():
    join = EventTimeJoin(ttl=10)
    join.push_feature(feature(0), F, 0)
    join.push_feature(feature(1, 20), F, 1)
    join.push_label(label(0, 21), L, 0)
    assert released(join, 22) == [("0", "F"), ("1", "F")]
    assert join.counters.expired_without_label == 1
    assert join.counters.pending_labels == 1  # waits for a feature "0" that never comes
    join.push_feature(feature(2, 40), F, 2)
    released(join, 41)
    assert join.counters.orphan_labels == 1
    assert join.counters.expired_without_label == 2  # feature 1 too


def test_label_older_than_ttl_is_not_joined():
    join = EventTimeJoin(ttl=10)
    join.push_feature(feature(0), F, 0)
    join.push_label(label(0, 10.5), L, 0)
    assert released(join, 11) == [("0", "F")]
    assert join.counters.labels_joined == 0
    assert join.counters.expired_without_label == 1


def test_late_events_are_counted_and_still_processed():
    core = LearningCore([ModelSpec("m", "logreg")])
    core.push_feature(feature(10), F, 0)
    assert core.advance(11) == 1
    core.push_feature(feature(3), F, 1)  # time 3 < 11, a watermark already passed
    core.push_label(label(3, 4), L, 0)
    assert core.counters.late_events == 2
    assert core.advance(11) == 2
    assert core.counters.labels_joined == 1
    assert core.models["m"].samples_learned == 1


def test_a_duplicate_feature_id_replaces_the_pending_one():
    join = EventTimeJoin()
    join.push_feature(FeatureEvent("a", 0.0, {"x": 0}), F, 0)
    join.push_feature(FeatureEvent("a", 1.0, {"x": 1}), F, 1)
    join.push_label(LabelEvent("a", 2.0, True), L, 0)
    steps = list(join.steps(3))
    assert [(p.x["x"], lab is not None) for p, lab in steps] == [(0, False), (1, False), (1, True)]
    assert join.counters.duplicate_features == 1


def test_join_state_is_bounded():
    join = EventTimeJoin(max_pending=5)
    for i in range(20):
        join.push_feature(feature(i), F, i)
        join.push_label(label(100 + i, i + 0.5), L, i)
        released(join, i + 1)
    assert join.counters.pending_features == 5
    assert join.counters.expired_without_label == 15
    assert join.counters.pending_labels == 5
    assert join.counters.orphan_labels == 15


def test_buffer_is_bounded_when_the_watermark_stalls():
    join = EventTimeJoin(max_pending=5)
    for i in range(20):
        join.push_feature(feature(i), F, i)
    assert len(released(join, -1)) == 15  # processed anyway, oldest first
    assert join.counters.buffered_events == 5
    assert join.counters.forced_events == 15


def test_join_pickles_with_its_buffers():
    join = EventTimeJoin(ttl=50)
    join.push_feature(feature(0), F, 0)
    join.push_label(label(0, 3), L, 0)
    join.push_feature(feature(1), F, 1)
    released(join, 1)
    copy = pickle.loads(pickle.dumps(join))
    assert released(copy, 10) == released(join, 10) == [("1", "F"), ("0", "L")]


EVENTS = list(dataset_events("Phishing", label_delay="random:0-30", limit=120, seed=11))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.randoms(use_true_random=False))
def test_order_of_pushes_between_advances_does_not_matter(window: int, rnd: random.Random):
    def run(shuffle: bool) -> dict[str, float]:
        core = LearningCore([ModelSpec("m", "logreg", ("Accuracy", "ROCAUC"))])
        for start in range(0, len(EVENTS), window):
            chunk = list(enumerate(EVENTS[start : start + window], start=start))
            if shuffle:
                rnd.shuffle(chunk)
            for offset, event in chunk:
                if isinstance(event, FeatureEvent):
                    core.push_feature(event, F, offset)
                else:
                    core.push_label(event, L, offset)
            # every event of the next chunk has a time ≥ this one's last
            core.advance(EVENTS[min(start + window, len(EVENTS) - 1)].time)
        core.flush()
        return core.metric_values("m")

    assert run(shuffle=True) == run(shuffle=False)


def test_a_join_pickled_with_the_former_two_heaps_restores_its_buffer():
    """Checkpoints written before the single sorted buffer held two heaps of
    (time, source, offset, pushed, event); they resume with the same events pending."""
    join = EventTimeJoin()
    state = dict(join.__dict__)
    del state["_buffer"]
    state["_features"] = [(1.0, F, 1, 0, feature(1)), (4.0, F, 2, 2, feature(2, 4))]
    state["_labels"] = [(3.0, L, 0, 1, label(1, 3))]
    restored = EventTimeJoin.__new__(EventTimeJoin)
    restored.__setstate__(state)
    assert released(restored, 10) == [("1", "F"), ("1", "L"), ("2", "F")]


def test_a_late_event_set_aside_for_a_checkpoint_is_not_counted_twice():
    join = EventTimeJoin()
    join.push_feature(feature(0, 10), F, 0)
    released(join, 11)
    join.push_feature(feature(1, 5), F, 1)  # late: below the watermark passed
    assert join.counters.late_events == 1
    found, aside = join.set_aside()
    assert found[F].offsets == [1] and found[F].earliest == 5
    checkpoint = pickle.loads(pickle.dumps(join))
    join.put_back(aside)
    assert join.counters.late_events == 1
    checkpoint.push_feature(feature(1, 5), F, 1)  # read again after a restore
    assert checkpoint.counters.late_events == 1
    assert released(checkpoint, 12) == released(join, 12) == [("1", "F")]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 30))
def test_cutting_at_a_label_count_changes_nothing_but_where_it_stops(seed: int, k: int) -> None:
    """``max_labels`` stops right after the k-th joined label (or the equal-time group that
    holds it) and leaves the rest buffered: taking the steps k labels at a time yields exactly
    the uncut sequence."""
    events = list(dataset_events("Phishing", label_delay="random:0-20", limit=150, seed=seed))
    whole, cut = EventTimeJoin(), EventTimeJoin()
    for join in (whole, cut):
        for offset, event in enumerate(events):
            if isinstance(event, FeatureEvent):
                join.push_feature(event, (0, offset % 3), offset)
            else:
                join.push_label(event, (1, offset % 3), offset)
    expected = [(p.id, None if label is None else label.id) for p, label in whole.steps(120.0)]
    got: list[tuple[str, str | None]] = []
    while True:
        before = cut.counters.labels_joined
        got += [(p.id, None if label is None else label.id) for p, label in cut.steps(120.0, k)]
        joined = cut.counters.labels_joined - before  # > k only to finish an equal-time group
        if joined < k:
            break
    assert got == expected
    assert cut.counters.late_events == whole.counters.late_events == 0


def _read_off(entries: list[tuple], passed: float) -> tuple[dict, int]:
    """What `EventTimeJoin.set_aside` must find, by a plain pass over the buffered entries."""
    found: dict = {}
    for time, _kind, source, offset, _pushed, _event in entries:
        offsets, earliest = found.get(source, ([], time))
        found[source] = ([*offsets, offset], min(earliest, time))
    late = sum(1 for entry in entries if entry[0] < passed)
    return {s: (sorted(o), e) for s, (o, e) in found.items()}, late


# a run: (source, kind, offset step, times as steps from the source's last time); mostly
# rising runs as Kafka gives them, sometimes gaps, repeats, falling times or a kind mixed in
_RUNS = st.lists(
    st.tuples(
        st.sampled_from([(0, 0), (0, 1), (1, 0), (1, 1)]),
        st.sampled_from([None, None, None, None, None, 0, 1]),  # None: the source's own kind
        st.sampled_from([1, 1, 1, 1, 2, 0, -3]),
        st.one_of(  # a run of one event, so that what falls does so between two runs
            st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, -4.0]), min_size=1, max_size=1),
            st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, -4.0]), min_size=1, max_size=8),
        ),
        st.sampled_from([None, None, 2.0, 6.0, math.inf]),  # then steps to this (relative)
        st.sampled_from([None, None, 1, 3]),  # with this label budget
        st.sampled_from([None, None, None, "pickle", "steps aside"]),  # then, before set_aside
    ),
    max_size=14,
)


@settings(max_examples=500, deadline=None)
@given(
    runs=_RUNS,
    set_aside_after=st.sets(st.integers(0, 13)),
    trim=st.sampled_from([1, 2, 4096]),
    whole=st.booleans(),
)
def test_what_is_set_aside_is_what_a_pass_over_the_buffer_finds(runs, set_aside_after, trim, whole):
    """Per source, the buffered offsets (sorted) and the earliest time; and the late count:
    whether the pushes were tracked (rising) or not, between any steps and label budgets,
    after a pickle round trip, or with steps taken while the buffer is set aside."""
    with mock.patch("learners.join._TRACK_TRIM", trim):  # tracks trimmed often, or never
        _set_aside_against_a_pass(runs, set_aside_after, whole)


def _set_aside_against_a_pass(runs: list, set_aside_after: set[int], whole: bool) -> None:
    join = EventTimeJoin(max_pending=40)
    last_offset: dict = {}
    last_time: dict = {}
    for i, (source, kind, step, deltas, watermark, budget, then) in enumerate(runs):
        kind = source[0] if kind is None else kind
        offset, time = last_offset.get(source, 100), last_time.get(source, 10 if whole else 10.0)
        offsets, times = [], []
        for delta in deltas:
            offset, time = offset + step, time + (round(delta) if whole else delta)
            offsets.append(offset)
            times.append(time)
        last_offset[source], last_time[source] = offset, time
        source = tuple(list(source))  # a new tuple each push, as the learner's
        ids = [str(o % 5) for o in offsets]  # labels join features now and then (budgets count)
        if kind:
            events = [FeatureEvent(i, t, {"x": 1.0}) for i, t in zip(ids, times, strict=True)]
            join.push_features(events, source, offsets)
        else:
            join.push_labels(
                [LabelEvent(i, t, True) for i, t in zip(ids, times, strict=True)], source, offsets
            )
        if watermark is not None:
            list(join.steps(min(times) + watermark, budget))
        if then == "pickle":
            join = pickle.loads(pickle.dumps(join))
        elif then == "steps aside":  # nothing to release while the buffer is aside
            found, aside = join.set_aside()
            assert list(join.steps(math.inf)) == []
            join.put_back(aside)
        if i in set_aside_after:
            entries = sorted(join._buffer)
            expected, late = _read_off(entries, join._passed)
            late_before = join.counters.late_events
            found, aside = join.set_aside()
            assert {s: len(u.offsets) for s, u in found.items()} == {
                s: len(o) for s, (o, _) in expected.items()
            }
            assert {s: (list(u.offsets), u.earliest) for s, u in found.items()} == expected
            assert aside[0] == late and join.counters.late_events == late_before - late
            join.put_back(aside)
            assert sorted(join._buffer) == entries
            assert join.counters.late_events == late_before


def test_a_source_with_both_kinds_is_read_from_the_buffer_when_set_aside():
    """At equal times labels are processed before features: in a source holding both, a
    label budget can stop after a label pushed later than a feature left waiting."""
    join, source = EventTimeJoin(), (0, 0)
    join.push_feature(feature(1, 5), source, 1)
    assert released(join, 6) == [("1", "F")]
    join.push_feature(feature(2, 7), source, 4)
    join.push_label(label(1, 7), source, 5)
    assert [(p.id, lab is not None) for p, lab in join.steps(8, max_labels=1)] == [("1", True)]
    found, _ = join.set_aside()
    assert list(found[source].offsets) == [4] and found[source].earliest == 7


def test_set_aside_and_put_back_hold_when_the_join_is_used_in_between():
    """Steps or pushes while the buffer is set aside, a second set-aside, and a push while
    `steps` is paused all leave `set_aside` finding what is buffered."""

    def found(join: EventTimeJoin) -> dict:
        result, aside = join.set_aside()
        join.put_back(aside)
        return {s: list(u.offsets) for s, u in result.items()}

    join = EventTimeJoin()
    join.push_features([feature(1, 1), feature(2, 2)], F, [0, 1])
    _, aside = join.set_aside()
    assert list(join.steps(0.5)) == [] and join.set_aside()[0] == {}
    join.put_back(aside)
    assert found(join) == {F: [0, 1]}
    _, aside = join.set_aside()
    join.push_features([feature(3, 3)], (0, 1), [7])
    join.put_back(aside)
    assert found(join) == {F: [0, 1], (0, 1): [7]}
    assert released(join, 2.5) == [("1", "F"), ("2", "F")]
    assert found(join) == {(0, 1): [7]}

    paused = EventTimeJoin()
    paused.push_features([feature(1, 2), feature(2, 1)], F, [0, 1])  # times fall: not tracked
    steps = paused.steps(5.0)
    next(steps)
    paused.push_features([feature(3, 9)], (0, 1), [7])
    assert len(list(steps)) == 1
    assert found(paused) == {(0, 1): [7]}


def test_offsets_that_are_not_a_list_of_ints_are_read_from_the_buffer():
    join = EventTimeJoin()
    join.push_features([feature(1, 1), feature(2, 2)], F, iter([4, 5]))  # type: ignore[arg-type]
    join.push_features([feature(3, 3)], (0, 1), (9,))  # type: ignore[arg-type]
    found, _ = join.set_aside()
    assert {s: list(u.offsets) for s, u in found.items()} == {F: [4, 5], (0, 1): [9]}


def _whole_sort(buffer: list, ordered: int) -> None:
    buffer.sort()


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 12))
def test_merging_the_pushes_into_the_ordered_buffer_is_a_whole_sort(
    rnd: random.Random, rounds: int
) -> None:
    """Pushes from several sources overlap the buffered events in time; steps at rising
    watermarks (some leaving events buffered, one paused mid-way), a set-aside and put-back,
    and a pickle round trip in between: every release, and the state, is what sorting the
    whole buffer gives."""
    plan = []
    clock, ident = 0.0, 0
    for _ in range(rounds):
        pushes = []
        for _ in range(rnd.randint(0, 4)):
            source = (rnd.randint(0, 1), rnd.randint(0, 2))
            times = sorted(clock + rnd.uniform(-3, 6) for _ in range(rnd.randint(1, 8)))
            events: list[Any] = []
            for time in times:
                ident += 1
                if source[0] == 0:
                    events.append(feature(ident % 17, time))
                else:
                    events.append(label(ident % 17, time, bool(ident % 2)))
            pushes.append((source, events))
        clock += rnd.uniform(0, 4)
        plan.append((pushes, clock, rnd.random() < 0.3, rnd.random() < 0.2, rnd.random() < 0.2))

    def run() -> tuple[list, bytes]:
        join, out, offset = EventTimeJoin(ttl=50.0), [], 0
        for pushes, watermark, pause, aside, roundtrip in plan:
            for source, events in pushes:
                offsets = list(range(offset, offset + len(events)))
                offset += len(events)
                if source[0] == 0:
                    join.push_features(events, source, offsets)
                else:
                    join.push_labels(events, source, offsets)
            if aside:  # with a push in between, older than what was set aside
                _, put = join.set_aside()
                offset += 1
                join.push_feature(feature(98, watermark - 6.0), (0, 4), offset)
                join.put_back(put)
            steps = join.steps(watermark)
            if pause:  # a push while `steps` is paused goes after the ordered entries
                first = next(steps, None)
                if first is not None:
                    out.append((first[0].id, first[1] is not None))
                offset += 1
                join.push_feature(feature(99, watermark - 1.0), (0, 3), offset)
            out.extend((p.id, lab is not None) for p, lab in steps)
            if roundtrip:
                join = pickle.loads(pickle.dumps(join))
        out.extend((p.id, lab is not None) for p, lab in join.steps(math.inf))
        return out, pickle.dumps(join.counters)

    ours = run()
    with mock.patch("learners.join._in_order", _whole_sort):
        assert run() == ours
