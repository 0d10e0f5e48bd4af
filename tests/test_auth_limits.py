"""Failed authentication is limited per source address and per principal (issue 15 §6).

Before: invalid tokens could be tried as fast as the server answered (~950/s), each one a
database lookup, and every one answered 401. Now at most ``auth_failure_limit`` failures
per ``auth_failure_window`` seconds, then 429 RESOURCE_EXHAUSTED with ``Retry-After``.

Real HTTP through uvicorn; other source addresses are other loopback addresses
(127.0.0.x), which Linux routes to the server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kms_hsm.config import Settings
from kms_hsm.service.runtime import Runtime, prepare
from tests.conftest import serve_inprocess

LIMIT = 3
# Long enough that the requests of one step always fit in it, even on a loaded machine.
WINDOW = 5.0
FOLDER = "b1gauthlimits"


@contextlib.contextmanager
def _service(token_dir: Path, tmp_path: Path) -> Iterator[tuple[Runtime, str, str]]:
    """A runtime of its own with a small failure budget, served over HTTP: (rt, url, admin)."""
    config = Settings(
        data_dir=tmp_path,
        pin_file=token_dir / "user-pin",
        database_url=f"sqlite:///{tmp_path / 'limits.db'}",
        scheduler_interval=0,
        auth_failure_limit=LIMIT,
        auth_failure_window=WINDOW,
    )
    prepare(config)
    runtime = Runtime.start(config)
    try:
        with serve_inprocess(runtime) as url:
            yield runtime, url, (tmp_path / "admin-token").read_text().strip()
    finally:
        runtime.close()


def _client(url: str, source: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(
        base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=source)
    )


def _list(client: httpx.Client, token: str) -> httpx.Response:
    return client.get(
        "/kms/v1/keys", params={"folderId": FOLDER}, headers={"Authorization": f"Bearer {token}"}
    )


def _assert_429(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == 8  # RESOURCE_EXHAUSTED
    assert "too many failed authentications" in body["message"]
    retry_after = r.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= WINDOW
    return int(retry_after)


def test_failed_tokens_from_one_source_get_429_with_retry_after_until_the_window_passes(
    token_dir: Path, tmp_path: Path
) -> None:
    with _service(token_dir, tmp_path) as (_rt, url, admin), _client(url) as client:
        assert _list(client, admin).status_code == 200  # known good from here on
        for i in range(LIMIT):
            r = _list(client, f"kmsh1_wrong{i}")
            assert r.status_code == 401, (i, r.text)
            assert "retry-after" not in r.headers
        retry_after = _assert_429(_list(client, "kmsh1_wrong-again"))
        # Also a token that was never tried: the source's budget is spent.
        _assert_429(_list(client, "kmsh1_fresh"))
        # A known-good token from the same address still works (the hot path is not limited).
        assert _list(client, admin).status_code == 200
        # Another address has its own budget.
        with _client(url, "127.0.0.2") as other:
            assert _list(other, "kmsh1_wrong").status_code == 401
        # The window lets go: failures are counted again (401), then limited again.
        time.sleep(retry_after + 0.2)
        assert _list(client, "kmsh1_wrong-later").status_code == 401


def test_revoked_and_unknown_tokens_get_the_same_answer(token_dir: Path, tmp_path: Path) -> None:
    # Before: once a revoked token's principal had LIMIT failures, the revoked token got 429
    # where an unknown one got 401, telling that the token once existed.
    with _service(token_dir, tmp_path) as (rt, url, _admin):
        principal = rt.auth.create_principal("limited")
        revoked, revoked_id = rt.auth.issue_token(principal.id)
        good, _ = rt.auth.issue_token(principal.id)
        rt.auth.revoke_token(revoked_id)
        for i in range(LIMIT):
            with _client(url, f"127.0.1.{i + 1}") as client:
                assert _list(client, revoked).status_code == 401
        with _client(url, "127.0.1.100") as client:
            assert _list(client, revoked).status_code == 401
            assert _list(client, "kmsh1_unknown").status_code == 401
            # The principal's valid token is not refused (no role: 403, not 401/429).
            assert _list(client, good).status_code == 403
            # Over the source's budget both are 429 alike.
            _list(client, "kmsh1_unknown2")
            _assert_429(_list(client, revoked))
            _assert_429(_list(client, "kmsh1_unknown3"))


def test_valid_tokens_work_from_an_address_over_its_budget_after_a_state_change(
    token_dir: Path, tmp_path: Path
) -> None:
    # Before: over budget, any token not cached got 429 before its lookup, and a state
    # change empties the cache: one bad client behind a NAT locked everyone there out.
    with _service(token_dir, tmp_path) as (rt, url, admin), _client(url) as client:
        assert _list(client, admin).status_code == 200
        fresh, _ = rt.auth.issue_token(rt.auth.create_principal("fresh").id)
        for i in range(LIMIT):
            assert _list(client, f"kmsh1_wrong{i}").status_code == 401
        _assert_429(_list(client, "kmsh1_wrong-again"))
        with _client(url, "127.0.3.1") as other:  # a state change, made elsewhere
            r = other.post(
                "/kms/v1/keys",
                json={"folderId": FOLDER, "defaultAlgorithm": "AES_256"},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 200, r.text
        assert _list(client, admin).status_code == 200
        assert _list(client, fresh).status_code == 403  # valid, no role: not 401/429
        _assert_429(_list(client, "kmsh1_wrong-still"))


def test_missing_or_malformed_credentials_are_not_counted(token_dir: Path, tmp_path: Path) -> None:
    with _service(token_dir, tmp_path) as (_rt, url, _admin), _client(url, "127.0.2.1") as client:
        for _ in range(LIMIT + 2):
            assert client.get("/kms/v1/keys", params={"folderId": FOLDER}).status_code == 401
            r = client.get(
                "/kms/v1/keys", params={"folderId": FOLDER}, headers={"Authorization": "Basic x"}
            )
            assert r.status_code == 401
        assert _list(client, "kmsh1_wrong").status_code == 401


def test_the_failure_tables_stay_bounded_under_a_flood_of_sources() -> None:
    from kms_hsm.service.limits import FailureWindow  # new in this change

    now = [0.0]
    table = FailureWindow(2, 60.0, max_keys=100, clock=lambda: now[0])
    for i in range(10_000):
        table.record(f"10.0.{i // 256}.{i % 256}")
        now[0] += 0.001
    assert len(table) == 100
    # The newest keys are kept, the oldest forgotten (they start again with a clean budget).
    last = "10.0.39.15"  # i = 9999
    table.record(last)
    assert table.retry_after(last) is not None
    assert table.retry_after("10.0.0.0") is None
    # The budget is a sliding window: it lets go when the older failure leaves it.
    now[0] += 60.0
    assert table.retry_after(last) is None


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # same /64: same budget
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("", ""),
        ("not:an:address", "not:an:address"),
    ],
)
def test_an_ipv6_host_counts_as_its_slash_64(source: str, key: str) -> None:
    from kms_hsm.service.limits import source_key  # new in this change

    assert source_key(source) == key
