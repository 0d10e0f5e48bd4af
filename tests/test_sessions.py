"""The session manager on the real token: one call at a time, reinitialise once and retry."""

from __future__ import annotations

import threading
import time

import pytest
from pkcs11 import exceptions as p11

from kms_hsm.config import Settings
from kms_hsm.crypto.pkcs11 import library
from kms_hsm.crypto.pkcs11.sessions import SessionManager, TokenSession
from kms_hsm.errors import BackendUnavailable

REINIT_INTERVAL = 0.3


@pytest.fixture
def manager(settings: Settings):
    sessions = SessionManager(
        settings.pkcs11_library,
        settings.token_label,
        settings.read_pin(),
        reinit_interval=REINIT_INTERVAL,
    )
    sessions.start()
    yield sessions
    sessions.close()


def _random(ts: TokenSession) -> bytes:
    return bytes(ts.session.generate_random(64))


def test_callers_on_many_threads_take_turns_and_all_succeed(manager: SessionManager) -> None:
    count = threading.Lock()
    inside = most = 0
    seen: set[int] = set()

    def op(ts: TokenSession) -> bytes:
        nonlocal inside, most
        with count:
            inside += 1
            most = max(most, inside)
        try:
            seen.add(id(ts))
            time.sleep(0.001)  # room for another thread to come in, if it could
            return _random(ts)
        finally:
            with count:
                inside -= 1

    results: list[bytes] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                results.append(manager.run(op))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(results) == 200 and all(len(r) == 8 for r in results)
    assert most == 1  # never two calls in the token at once
    assert len(seen) == 1  # all on the one session
    assert manager.stats.reinitializations == manager.stats.retries == 0


def test_a_device_error_reinitialises_once_and_retries_on_the_new_session(
    manager: SessionManager,
) -> None:
    seen: list[TokenSession] = []

    def op(ts: TokenSession) -> bytes:
        seen.append(ts)
        if len(seen) == 1:
            raise p11.DeviceError("the token went away")
        return _random(ts)

    assert len(manager.run(op)) == 8
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert manager.stats.reinitializations == 1 and manager.stats.retries == 1


def test_a_device_error_after_the_reinitialisation_is_a_503_and_the_next_call_works(
    manager: SessionManager,
) -> None:
    calls = 0

    def op(ts: TokenSession) -> bytes:
        nonlocal calls
        calls += 1
        raise p11.DeviceError("still gone")

    with pytest.raises(BackendUnavailable):
        manager.run(op)
    assert calls == 2 and manager.stats.reinitializations == 1
    assert len(manager.run(_random)) == 8
    assert manager.stats.reinitializations == 1


def test_a_call_waiting_behind_a_failing_one_runs_after_its_reinitialisation(
    manager: SessionManager,
) -> None:
    """Waiting callers never see the old session and never reinitialise a second time."""
    inside = threading.Event()
    failed_on: list[TokenSession] = []
    late: list[TokenSession] = []

    def failing(ts: TokenSession) -> bytes:
        if not failed_on:
            failed_on.append(ts)
            inside.set()
            time.sleep(0.2)  # the latecomer is waiting meanwhile
            raise p11.DeviceRemoved("unplugged")
        return _random(ts)

    def latecomer(ts: TokenSession) -> bytes:
        late.append(ts)
        return _random(ts)

    first = threading.Thread(target=manager.run, args=(failing,))
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=manager.run, args=(latecomer,))
    second.start()
    for thread in (first, second):
        thread.join(10)
    assert len(late) == 1 and late[0] is not failed_on[0]
    assert manager.stats.reinitializations == 1


def test_while_the_token_stays_down_calls_fail_fast_until_it_is_back(
    manager: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unplugged(ts: TokenSession) -> bytes:
        raise p11.DeviceRemoved("unplugged")

    def no_module(path: str) -> None:
        raise library.ModuleError("C_Initialize", 0x30)  # CKR_DEVICE_ERROR

    real_load = library.load
    monkeypatch.setattr(library, "load", no_module)
    with pytest.raises(BackendUnavailable):
        manager.run(unplugged)
    assert manager.stats.failed_reinitializations == 1

    # Within the interval a call does not even try: 503 at once.
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        manager.run(_random)
    assert time.monotonic() - started < REINIT_INTERVAL / 2
    assert manager.stats.failed_reinitializations == 1

    monkeypatch.setattr(library, "load", real_load)
    time.sleep(REINIT_INTERVAL)
    assert len(manager.run(_random)) == 8
    assert manager.stats.reinitializations == 1
