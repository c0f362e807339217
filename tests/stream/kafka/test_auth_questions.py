"""`stream.kafka.auth.LoginQuestions.connect_or_stop`: the race between a connection and the
question asked beside it, in isolation (the brokers' answer, `login_refusal`, given by the test;
tests/stream/kafka/test_security.py runs it against real brokers that refuse a login).

- the brokers refuse the login while the connection is still under way: the refusal is raised
  at once, and the client the connection makes later is given to ``discard``;
- the connection gets through before anything is asked: its client, and nothing asked;
- the connection fails and the brokers said nothing: its error as it was;
- without SASL nothing is asked and the connection is made on the caller's thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from schemas.errors import KafkaAdapterError
from stream.kafka import auth
from stream.kafka.auth import KafkaAuthError, LoginQuestions
from stream.kafka.security import PLAINTEXT, KafkaSecurity
from tests.support.waiting import wait_until

SASL = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "app", "s3cret")
WAIT = 30.0  # a bound for what must come at once (kafka-python's bootstrap timeout)


class Brokers:
    """`login_refusal` as the test's brokers answer it: ``refusal``, once ``release`` is set."""

    def __init__(self) -> None:
        self.refusal: str | None = None
        self.release = threading.Event()
        self.asked = threading.Event()

    def __call__(self, bootstrap: str, security: KafkaSecurity) -> str | None:
        self.asked.set()
        assert self.release.wait(WAIT)
        return self.refusal


@pytest.fixture
def brokers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Brokers]:
    answers = Brokers()
    monkeypatch.setattr(auth, "login_refusal", answers)
    yield answers
    answers.release.set()


def test_a_refusal_found_beside_a_connection_under_way_is_raised_at_once(
    brokers: Brokers,
) -> None:
    discarded: list[str]
    brokers.refusal, connected, discarded = "Authentication failed", threading.Event(), []
    brokers.release.set()

    def make() -> str:
        assert connected.wait(WAIT)  # the connection goes on long after the refusal
        return "client"

    questions = LoginQuestions("k1:9093", SASL, after=0.0)
    with pytest.raises(
        KafkaAuthError, match=r"refused this process's credentials \(Auth"
    ) as raised:
        questions.connect_or_stop(make, discarded.append)
    assert str(raised.value).count("refused") == 1  # said once, not wrapped in itself
    assert not connected.is_set()
    connected.set()  # the abandoned connection ends: its client is discarded, not returned
    wait_until(lambda: discarded == ["client"], WAIT, "the late client to be discarded")


def test_a_connection_through_before_the_question_returns_its_client(brokers: Brokers) -> None:
    discarded: list[str] = []
    questions = LoginQuestions("k1:9093", SASL, after=WAIT)
    assert questions.connect_or_stop(lambda: "client", discarded.append) == "client"
    assert not brokers.asked.is_set() and discarded == []


def test_a_connection_that_fails_while_the_brokers_say_nothing_raises_its_own_error(
    brokers: Brokers,
) -> None:
    brokers.release.set()  # they answer: no refusal (brokers away answer nothing either)

    def make() -> str:
        assert brokers.asked.wait(WAIT)
        raise KafkaAdapterError("cannot reach Kafka at k1:9093: Unable to bootstrap")

    questions = LoginQuestions("k1:9093", SASL, after=0.0)
    with pytest.raises(KafkaAdapterError, match="cannot reach Kafka") as raised:
        questions.connect_or_stop(make, lambda _: None)
    assert type(raised.value) is KafkaAdapterError


def test_a_connection_whose_question_is_still_out_waits_for_the_connection(
    brokers: Brokers,
) -> None:
    """The question is asked but not answered; the connection gets through: its client."""

    def make() -> str:
        assert brokers.asked.wait(WAIT)
        return "client"

    questions = LoginQuestions("k1:9093", SASL, after=0.0)
    assert questions.connect_or_stop(make, lambda _: None) == "client"


def test_without_sasl_nothing_is_asked_and_the_connection_is_the_callers(
    brokers: Brokers,
) -> None:
    threads: list[threading.Thread] = []

    def make() -> str:
        threads.append(threading.current_thread())
        return "client"

    questions = LoginQuestions("k1:9092", PLAINTEXT, after=0.0)
    assert questions.connect_or_stop(make, lambda _: None) == "client"
    assert threads == [threading.current_thread()] and not brokers.asked.is_set()
