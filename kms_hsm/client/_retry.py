"""The retry and deadline rules, shared by the sync and the async client.

A call has one deadline (the client's ``timeout``), which covers every attempt, every
backoff sleep and every Operation poll. Each attempt may use what is left of it, or at most
``attempt_timeout`` when the client has one. ``Attempts`` decides after each attempt: return
the answer, raise, or sleep this long and send again. The clients only do the I/O.

What is retried:
- 503 (UNAVAILABLE) for calls that are safe to repeat; for the others (Create, Rotate,
  access-binding changes...) only when the server also sent ``Retry-After``, its sign of a
  refusal before any work (a busy or not yet ready server): a 503 from a commit that failed
  half-way (a PostgreSQL connection lost during COMMIT) may follow work that was done;
- 429 (RESOURCE_EXHAUSTED) when the server sent ``Retry-After``, every method;
- connect failures (refused, connect timeout, no route), every method: nothing was sent;
- a connection reset or a broken answer, an attempt timeout, 502, 504, INTERNAL and
  DEADLINE_EXCEEDED, only for calls that are safe to repeat (GETs and the crypto methods):
  the server may have done the work (Yandex's KMS providers retry these codes too).
Not retried: a TLS handshake failure (the same certificate fails again) and every other
error. Sleeps are exponential with full jitter (0.05 s doubling, at most 2 s), at least
``Retry-After``, and never past the deadline: when the next sleep would end past it, the
last error is raised at once. Running out of time raises ``DeadlineExceeded`` (a
``BackendUnavailable``); giving up on an unreachable server raises ``BackendUnavailable``.
"""

from __future__ import annotations

import json
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx

from kms_hsm.client.calls import Call
from kms_hsm.client.errors import DeadlineExceeded, error_from_response, retry_after_seconds
from kms_hsm.errors import BackendUnavailable, KmsError, StatusCode

BASE_DELAY = 0.05
MAX_DELAY = 2.0


@dataclass(frozen=True)
class Retry:
    """Sleep ``delay`` seconds, then send the request again."""

    delay: float


class Attempts:
    """The retry state of one request within one call's deadline."""

    def __init__(
        self,
        call: Call[Any],
        *,
        endpoint: str,
        deadline: float,
        timeout: float,
        retries: int,
        attempt_timeout: float | None,
        secret: str | None,
        rng: random.Random,
    ) -> None:
        self.call = call
        self.endpoint = endpoint
        self.deadline = deadline
        self.timeout = timeout
        self.retries = retries
        self.attempt_timeout = attempt_timeout
        self.secret = secret
        self.rng = rng
        self.attempt = 0

    def remaining(self) -> float:
        """Seconds left before the deadline."""
        return self.deadline - time.monotonic()

    def http_timeout(self) -> httpx.Timeout:
        """This attempt's httpx timeout: what is left of the deadline, at most
        ``attempt_timeout``."""
        left = self.remaining()
        if left <= 0:
            raise self.deadline_exceeded()
        if self.attempt_timeout is not None:
            left = min(left, self.attempt_timeout)
        return httpx.Timeout(left)

    def deadline_exceeded(self) -> DeadlineExceeded:
        """The error of a call that ran out of time."""
        return DeadlineExceeded(
            f"no answer from the KMS at {self.endpoint} within the {self.timeout:g} s deadline "
            f"({self.call.method} {self.call.path}, {self.attempt + 1} attempt(s))"
        )

    def _backoff(self, error: KmsError, retry_after: float | None = None) -> Retry:
        """The next sleep, or ``error`` raised when no retry is left or no time for one."""
        if self.attempt >= self.retries:
            raise error
        cap = min(MAX_DELAY, BASE_DELAY * 2.0**self.attempt)
        delay = self.rng.uniform(0, cap)
        if retry_after is not None:
            delay = max(delay, retry_after)
        if delay >= self.remaining():
            raise error
        self.attempt += 1
        return Retry(delay)

    def on_response(self, response: httpx.Response) -> Any:
        """The decoded JSON of a 2xx answer, a ``Retry``, or the server's error raised."""
        status = response.status_code
        if 200 <= status < 300:
            if not response.content:
                return {}
            try:
                return json.loads(response.content)
            except ValueError as exc:
                raise self._broken(f"the answer is not JSON (HTTP {status})") from exc
        error = error_from_response(status, response.headers, response.content, secret=self.secret)
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if status == 503 and (self.call.idempotent or retry_after is not None):
            return self._backoff(error, retry_after)
        if status == 429 and retry_after is not None:
            return self._backoff(error, retry_after)
        if self.call.idempotent and (
            status in (502, 504)
            or error.code in (StatusCode.INTERNAL, StatusCode.DEADLINE_EXCEEDED)
        ):
            # As Yandex's own KMS providers do for Encrypt/Decrypt: INTERNAL and
            # DEADLINE_EXCEEDED may pass, and repeating a call that is safe to repeat costs
            # nothing but time.
            return self._backoff(error, retry_after)
        raise error

    def _broken(self, reason: str) -> BackendUnavailable:
        return BackendUnavailable(f"the KMS at {self.endpoint} {reason}")

    def on_transport_error(self, exc: httpx.TransportError) -> Retry:
        """A ``Retry`` after a network failure, or the failure raised as a ``KmsError``."""
        where = f"{self.call.method} {self.call.path}, {self.attempt + 1} attempt(s)"
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            if self.remaining() <= 0.001:
                raise self.deadline_exceeded() from exc
            # An attempt timed out before the deadline (``attempt_timeout``).
            error: KmsError = DeadlineExceeded(
                f"no answer from the KMS at {self.endpoint} within the {self.attempt_timeout:g} s"
                f" attempt timeout ({where})"
            )
        elif _certificate_refused(exc):
            # Not transient: another try meets the same certificate.
            raise BackendUnavailable(
                f"the TLS handshake with {self.endpoint} failed: {self._text(exc)}"
            ) from exc
        else:
            error = BackendUnavailable(
                f"cannot reach the KMS at {self.endpoint}: {self._text(exc)} ({where})"
            )
        # Nothing was sent: a refused or timed-out connect, no free pooled connection.
        unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if not unsent and not self.call.idempotent:
            # The server may have done it: sending it again could do it twice.
            raise error from exc
        try:
            return self._backoff(error)
        except KmsError as final:
            raise final from exc

    def _text(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return text.replace(self.secret, "***") if self.secret else text


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a connect failed on certificate verification (or any TLS handshake error)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def poll_delay(polls: int, deadline: float, operation_id: str, timeout: float) -> float:
    """The sleep before polling a not yet done Operation again; raises past the deadline."""
    delay = min(MAX_DELAY, BASE_DELAY * 2.0**polls)
    if time.monotonic() + delay >= deadline:
        raise DeadlineExceeded(
            f"operation {operation_id} was not done within the {timeout:g} s deadline"
        )
    return delay
