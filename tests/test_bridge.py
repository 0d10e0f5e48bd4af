"""The greenlet bridge and the HSM agent's wire helpers (no token needed)."""

from __future__ import annotations

import asyncio
import contextvars

import greenlet
import pytest

from kms_hsm.crypto.bridge import await_in_bridge, in_bridge, run_bridged
from kms_hsm.crypto.pkcs11.agent import AgentConfig, decode_error, encode_error
from kms_hsm.crypto.pkcs11.sessions import KeyMaterialMissing
from kms_hsm.errors import BackendUnavailable, DecryptionFailed

_request = contextvars.ContextVar("request", default="none")


async def _later(value: int) -> int:
    await asyncio.sleep(0.001)
    return value * 2


def _sync_core() -> tuple[bool, int, str]:
    # Plain synchronous code that awaits twice, deep inside, and reads a context variable.
    total = await_in_bridge(_later(1)) + await_in_bridge(_later(10))
    return in_bridge(), total, _request.get()


def test_sync_code_awaits_on_the_loop_and_keeps_the_context() -> None:
    async def main() -> tuple[bool, int, str]:
        _request.set("r-1")
        return await run_bridged(_sync_core)

    assert asyncio.run(main()) == (True, 22, "r-1")
    assert not in_bridge()


def test_errors_cross_the_bridge_both_ways() -> None:
    async def fails() -> None:
        raise DecryptionFailed(log_detail="tag")

    def core() -> str:
        with pytest.raises(DecryptionFailed):
            await_in_bridge(fails())
        raise KeyMaterialMissing()

    with pytest.raises(KeyMaterialMissing):
        asyncio.run(run_bridged(core))


def test_await_outside_the_bridge_is_refused() -> None:
    coroutine = _later(1)
    with pytest.raises(RuntimeError):
        await_in_bridge(coroutine)
    coroutine.close()


@pytest.mark.parametrize("calls", [50, 600])  # 600: more at once than the idle pool keeps
def test_many_bridged_calls_interleave_on_one_loop(calls: int) -> None:
    async def main() -> list[int]:
        first = await asyncio.gather(
            *(run_bridged(lambda n=n: await_in_bridge(_later(n))) for n in range(calls))
        )
        again = await asyncio.gather(*(run_bridged(lambda n=n: n) for n in range(calls)))
        return first + again

    assert asyncio.run(main()) == [2 * n for n in range(calls)] + list(range(calls))


def test_greenlets_are_reused_and_carry_nothing_from_the_previous_work() -> None:
    def whoami() -> tuple[object, str]:
        await_in_bridge(_later(0))
        return greenlet.getcurrent(), _request.get()

    def fails() -> None:
        raise DecryptionFailed(log_detail="tag")

    async def main() -> list[tuple[object, str]]:
        seen = []
        for n in range(3):
            _request.set(f"r-{n}")
            seen.append(await run_bridged(whoami))
            with pytest.raises(DecryptionFailed):
                await run_bridged(fails)
        return seen

    seen = asyncio.run(main())
    assert [request for _g, request in seen] == ["r-0", "r-1", "r-2"]
    assert len({id(g) for g, _r in seen}) == 1  # one greenlet served all six calls


def test_a_cancelled_caller_leaves_the_bridge_usable() -> None:
    async def main() -> int:
        task = asyncio.ensure_future(run_bridged(lambda: await_in_bridge(asyncio.sleep(10))))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await run_bridged(lambda: await_in_bridge(_later(4)))

    assert asyncio.run(main()) == 8


@pytest.mark.parametrize(
    "error",
    [
        DecryptionFailed(log_detail="tag mismatch"),
        BackendUnavailable(log_detail="x"),
        KeyMaterialMissing(log_detail="object gone"),
    ],
)
def test_agent_errors_keep_class_message_and_detail(error) -> None:
    decoded = decode_error(encode_error(error))
    assert type(decoded) is type(error)
    assert (decoded.message, decoded.log_detail) == (error.message, error.log_detail)


def test_unexpected_agent_errors_become_503_and_unknown_names_too() -> None:
    assert isinstance(decode_error(encode_error(ValueError("boom"))), BackendUnavailable)
    assert isinstance(decode_error(("NoSuchClass", "m", None)), BackendUnavailable)
    assert isinstance(decode_error(("AgentConfig", "m", None)), BackendUnavailable)


def test_agent_config_repr_hides_the_pin() -> None:
    config = AgentConfig("/lib.so", "kms-hsm", "123456-secret", 1, 5.0, 5.0, "INFO")
    assert "123456-secret" not in repr(config)
