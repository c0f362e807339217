"""Where a checkpoint that leaves buffered events out resumes, and what it skips on the way."""

from __future__ import annotations

from stream.checkpoint.protocol import kept_indexes, resume_positions


def test_a_partition_without_buffered_events_resumes_where_it_was_read() -> None:
    assert resume_positions({"f:0": 40, "l:0": 12}, {}, {}) == ({"f:0": 40, "l:0": 12}, {})


def test_a_buffered_suffix_is_read_again_and_nothing_is_skipped() -> None:
    resume, skip = resume_positions({"f:0": 40}, {"f:0": [35, 36, 37, 38, 39]}, {})
    assert (resume, skip) == ({"f:0": 35}, {})


def test_what_was_handled_between_buffered_events_is_skipped() -> None:
    # 36 and 39 were processed out of offset order (or dead-lettered): read again, left out
    resume, skip = resume_positions({"f:0": 40}, {"f:0": [35, 37, 38]}, {})
    assert resume == {"f:0": 35}
    assert skip == {"f:0": [(36, 37), (39, 40)]}
    assert [35 + i for i in kept_indexes(list(range(35, 40)), skip["f:0"])] == [35, 37, 38]


def test_ranges_not_read_again_yet_are_carried_over_and_clipped() -> None:
    # resumed earlier with (50, 60) to skip; read up to 55 since, nothing buffered now
    resume, skip = resume_positions({"f:0": 55}, {}, {"f:0": [(50, 60), (70, 72)]})
    assert resume == {"f:0": 55}
    assert skip == {"f:0": [(55, 60), (70, 72)]}
    # ranges already passed are dropped
    assert resume_positions({"f:0": 80}, {}, {"f:0": [(50, 60)]}) == ({"f:0": 80}, {})


def test_buffered_gaps_come_before_carried_ranges() -> None:
    resume, skip = resume_positions({"f:0": 55}, {"f:0": [52, 54]}, {"f:0": [(50, 60)]})
    assert resume == {"f:0": 52}
    assert skip == {"f:0": [(53, 54), (55, 60)]}
