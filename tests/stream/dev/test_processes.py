"""`stream.dev.processes.EndOnSignal`: SIGTERM and SIGHUP end a command as `Signalled`."""

from __future__ import annotations

import contextlib
import signal

import pytest

from stream.dev.processes import EndOnSignal, Signalled


def test_a_signal_whose_exception_was_swallowed_still_ends_the_block_as_signalled() -> None:
    """A signal handler runs wherever the main thread is: inside a weakref callback (an import
    lock's, in a CI run of the demo) the `Signalled` it raises is printed and dropped, and the
    demo ran to its end and exited 0. The block's end raises it again."""
    # suppress: dropped, as Python drops what a weakref callback or a finalizer raises
    with pytest.raises(Signalled) as caught, EndOnSignal(), contextlib.suppress(Signalled):
        signal.raise_signal(signal.SIGHUP)
    assert caught.value.signum == signal.SIGHUP and caught.value.code == 128 + signal.SIGHUP


def test_a_signal_raises_once_where_it_arrives_and_the_handlers_are_put_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Signalled) as caught, EndOnSignal():
        signal.raise_signal(signal.SIGTERM)
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_swallowed_signal_is_raised_again_by_check() -> None:
    """The demo's loop asks at each step: a swallowed SIGTERM (the CI run where the demo then
    replayed to its end, 51 s, without saying it stopped) ends it at the next step."""
    with pytest.raises(Signalled) as caught, EndOnSignal() as signals:
        signals.check()  # nothing came: nothing raised
        with contextlib.suppress(Signalled):
            signal.raise_signal(signal.SIGTERM)
        signals.check()
        pytest.fail("check() did not raise")  # pragma: no cover
    assert caught.value.signum == signal.SIGTERM
