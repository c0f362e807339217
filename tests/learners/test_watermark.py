"""The min-of-max watermark over ordered sources."""

from __future__ import annotations

import pickle

from learners.watermark import Watermark


def test_unknown_or_silent_sources_say_nothing():
    assert Watermark().value() is None
    wm = Watermark([(0, 0), (1, 0)])
    wm.observe((0, 0), 1.0)
    assert wm.value() is None


def test_value_is_min_over_active_sources_of_max_seen():
    wm = Watermark()
    wm.observe((0, 0), 4.0)
    wm.observe((0, 0), 2.0)  # never goes back
    wm.observe((1, 0), 3.0)
    assert wm.max_seen((0, 0)) == 4.0
    assert wm.value() == 3.0
    wm.mark_idle((1, 0), True)
    assert wm.value() == 4.0
    wm.mark_idle((1, 0), False)
    assert wm.value() == 3.0


def test_all_idle_is_none_not_infinity():
    wm = Watermark()
    wm.observe((0, 0), 4.0)
    wm.mark_idle((0, 0), True)
    wm.mark_idle((0, 1), True)
    assert wm.value() is None


def test_watermark_pickles():
    wm = Watermark([(0, 1)])
    wm.observe((0, 1), 9.0)
    assert pickle.loads(pickle.dumps(wm)).value() == 9.0
