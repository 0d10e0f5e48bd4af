"""The session pool on the real token: bounded leases, reuse, a timeout when all are out."""

from __future__ import annotations

import threading
import time

import pytest

from kms_hsm.config import Settings
from kms_hsm.crypto.pkcs11.sessions import SessionManager
from kms_hsm.errors import BackendUnavailable


@pytest.fixture
def pool(settings: Settings):
    sessions = SessionManager(
        settings.pkcs11_library,
        settings.token_label,
        settings.read_pin(),
        pool_size=2,
        lease_timeout=0.3,
    )
    sessions.start()
    yield sessions
    sessions.close()


def test_leases_are_bounded_and_reused(pool: SessionManager) -> None:
    with pool._lease() as first, pool._lease() as second:
        assert first is not second
        started = time.monotonic()
        with pytest.raises(BackendUnavailable), pool._lease():
            pass
        assert 0.25 < time.monotonic() - started < 2
    for _ in range(5):
        with pool._lease() as again:
            assert again in (first, second)
    assert pool.stats.sessions_opened == 2


def test_a_waiting_lease_gets_the_session_given_back(pool: SessionManager) -> None:
    got: list[object] = []
    with pool._lease(), pool._lease():

        def third() -> None:
            with pool._lease() as session:
                got.append(session)

        waiter = threading.Thread(target=third)
        waiter.start()
        time.sleep(0.05)
        assert got == []  # both sessions are out
        # Leaving this block returns the second and then the first session.
    waiter.join(timeout=2)
    assert len(got) == 1 and pool.stats.sessions_opened == 2  # a returned one, not a new one


def test_a_lease_asked_for_during_reinitialisation_does_not_hold_it_up(
    pool: SessionManager,
) -> None:
    """Reinitialising waits for the calls in flight; one that arrives meanwhile waits too."""
    results: dict[str, object] = {}
    held = threading.Event()

    def holder() -> None:
        with pool._lease():
            held.set()
            time.sleep(0.2)

    def reinit() -> None:
        try:
            pool._reinitialize(pool.generation, "test")
            results["reinit"] = "ok"
        except BackendUnavailable as exc:
            results["reinit"] = exc

    def latecomer() -> None:
        with pool._lease() as session:
            results["late"] = session.generation

    first = threading.Thread(target=holder)
    first.start()
    held.wait(2)
    threads = [threading.Thread(target=reinit), threading.Thread(target=latecomer)]
    threads[0].start()
    time.sleep(0.05)  # the reinitialisation is waiting for the holder
    threads[1].start()
    for thread in [first, *threads]:
        thread.join(5)
    assert results["reinit"] == "ok" and pool.stats.reinitializations == 1
    assert results["late"] == pool.generation  # a session of the new generation
