"""``Client`` and ``AsyncClient``: the methods of ``calls``, bound to an httpx client.

Every REST method is declared once, in ``kms_hsm.client.calls``; the ``_Api`` class below
lists them once as descriptors. A descriptor read from a ``Client`` gives a function that
runs the call and returns its result; read from an ``AsyncClient``, a coroutine function.
The two classes differ only in how they send a request and sleep (``_execute``).
"""

from __future__ import annotations

import functools
import inspect
import random
import socket
import ssl
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Generic, ParamSpec, Self, TypeVar, final, overload

import anyio
import httpx

from kms_hsm.client import calls, models
from kms_hsm.client._retry import Attempts, Retry, poll_delay
from kms_hsm.client.calls import Call
from kms_hsm.client.errors import Unknown, error_for
from kms_hsm.client.models import Operation, Page

P = ParamSpec("P")
T = TypeVar("T")

USER_AGENT = "kms-hsm-client"
# httpx writes headers and body in two sends; without TCP_NODELAY Nagle's algorithm holds
# the body back until the server's delayed ACK (~40 ms a request).
_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def _ssl(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx's ``verify``: a CA bundle path becomes a context (httpx deprecates paths)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _parse(call: Call[T], data: Any) -> T:
    """The typed result of an answer; an answer of the wrong shape is ``Unknown``."""
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object was expected, not {type(data).__name__}")
        return call.parse(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise Unknown(
            f"unexpected answer to {call.method} {call.path}: {type(exc).__name__}: {exc}"
        ) from exc


def _operation_result(call: Call[T], op: Operation) -> T:
    """The typed response of a done Operation, or its error raised."""
    if op.error is not None:
        raise error_for(op.error.code, op.error.message, details=op.error.details)
    return _parse(call, op.response or {})


_AN_OPERATION = Call("GET", "/operations/{operationId}", Operation.from_json)


def _operation(data: Any) -> Operation:
    return _parse(_AN_OPERATION, data)


def _raw(build: Callable[P, Call[Any]]) -> Callable[P, Call[Operation]]:
    """The same method, answered with its Operation (not waited for)."""

    @functools.wraps(build)
    def raw(*args: P.args, **kwargs: P.kwargs) -> Call[Operation]:
        return build(*args, **kwargs).raw_operation()

    what = (build.__doc__ or build.__name__).split(";")[0].split(":")[0].rstrip(".")
    raw.__doc__ = f"{what}, answered with its Operation as the server sent it (not waited for)."
    del raw.__wrapped__
    raw.__signature__ = inspect.signature(build).replace(  # type: ignore[attr-defined]
        return_annotation="Call[Operation]"
    )
    return raw


def _signature(build: Callable[..., Any], returns: str, *, item: bool = False) -> inspect.Signature:
    """``build``'s parameters with the return a client method has (for help() and IDEs):
    ``returns`` formatted with the Call's result type, or with a page's item type."""
    signature = inspect.signature(build)
    name = str(signature.return_annotation).removeprefix("Call[").removesuffix("]")
    if item:
        page = getattr(models, name, None)
        bases = [b for b in getattr(page, "__orig_bases__", ()) if typing.get_args(b)]
        name = typing.get_args(bases[0])[0].__name__ if bases else "Any"
    return signature.replace(return_annotation=returns.format(name))


class _Method(Generic[P, T]):
    """A REST method of both clients: sync on ``Client``, async on ``AsyncClient``."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__
        self.signature = _signature(build, "{}")

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: Client, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: type | None = None) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        assert isinstance(obj, Client | AsyncClient)
        return obj._bind(self.build, self.name, self.signature)


class _Pages(Generic[P, T]):
    """Every item of a List method, page after page: an iterator (async on ``AsyncClient``)."""

    def __init__(self, build: Callable[P, Call[Page[T]]]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = f"Every item of {build.__name__}, fetching page after page."
        self.signature = _signature(build, "Iterator[{}]", item=True)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: Client, owner: type | None = None) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(
        self, obj: AsyncClient, owner: type | None = None
    ) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        assert isinstance(obj, Client | AsyncClient)
        return obj._bind_pages(self.build, self.name, self.signature)


class _Api:
    """The REST methods, declared once for both clients (see ``kms_hsm.client.calls``)."""

    # SymmetricCrypto
    encrypt = _Method(calls.encrypt)
    decrypt = _Method(calls.decrypt)
    generate_data_key = _Method(calls.generate_data_key)
    re_encrypt = _Method(calls.re_encrypt)
    # SymmetricKeyService
    create_key = _Method(calls.create_key)
    create_key_operation = _Method(_raw(calls.create_key))
    get_key = _Method(calls.get_key)
    list_keys = _Method(calls.list_keys)
    iter_keys = _Pages(calls.list_keys)
    update_key = _Method(calls.update_key)
    update_key_operation = _Method(_raw(calls.update_key))
    delete_key = _Method(calls.delete_key)
    delete_key_operation = _Method(_raw(calls.delete_key))
    rotate_key = _Method(calls.rotate_key)
    rotate_key_operation = _Method(_raw(calls.rotate_key))
    list_versions = _Method(calls.list_versions)
    iter_versions = _Pages(calls.list_versions)
    set_primary_version = _Method(calls.set_primary_version)
    schedule_version_destruction = _Method(calls.schedule_version_destruction)
    cancel_version_destruction = _Method(calls.cancel_version_destruction)
    list_key_operations = _Method(calls.list_key_operations)
    iter_key_operations = _Pages(calls.list_key_operations)
    # OperationService
    get_operation = _Method(calls.get_operation)
    # Access bindings
    list_key_access_bindings = _Method(calls.list_key_access_bindings)
    iter_key_access_bindings = _Pages(calls.list_key_access_bindings)
    set_key_access_bindings = _Method(calls.set_key_access_bindings)
    update_key_access_bindings = _Method(calls.update_key_access_bindings)
    list_signature_key_access_bindings = _Method(calls.list_signature_key_access_bindings)
    set_signature_key_access_bindings = _Method(calls.set_signature_key_access_bindings)
    update_signature_key_access_bindings = _Method(calls.update_signature_key_access_bindings)
    list_encryption_key_access_bindings = _Method(calls.list_encryption_key_access_bindings)
    set_encryption_key_access_bindings = _Method(calls.set_encryption_key_access_bindings)
    update_encryption_key_access_bindings = _Method(calls.update_encryption_key_access_bindings)
    list_folder_access_bindings = _Method(calls.list_folder_access_bindings)
    iter_folder_access_bindings = _Pages(calls.list_folder_access_bindings)
    set_folder_access_bindings = _Method(calls.set_folder_access_bindings)
    update_folder_access_bindings = _Method(calls.update_folder_access_bindings)
    # Asymmetric signature keys
    create_signature_key = _Method(calls.create_signature_key)
    get_signature_key = _Method(calls.get_signature_key)
    list_signature_keys = _Method(calls.list_signature_keys)
    iter_signature_keys = _Pages(calls.list_signature_keys)
    update_signature_key = _Method(calls.update_signature_key)
    delete_signature_key = _Method(calls.delete_signature_key)
    list_signature_key_operations = _Method(calls.list_signature_key_operations)
    sign = _Method(calls.sign)
    sign_hash = _Method(calls.sign_hash)
    get_signature_public_key = _Method(calls.get_signature_public_key)
    # Asymmetric encryption keys
    create_encryption_key = _Method(calls.create_encryption_key)
    get_encryption_key = _Method(calls.get_encryption_key)
    list_encryption_keys = _Method(calls.list_encryption_keys)
    iter_encryption_keys = _Pages(calls.list_encryption_keys)
    update_encryption_key = _Method(calls.update_encryption_key)
    delete_encryption_key = _Method(calls.delete_encryption_key)
    list_encryption_key_operations = _Method(calls.list_encryption_key_operations)
    asymmetric_decrypt = _Method(calls.asymmetric_decrypt)
    get_encryption_public_key = _Method(calls.get_encryption_public_key)
    # IAM
    create_iam_token = _Method(calls.create_iam_token)

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        verify: bool | str | ssl.SSLContext = True,
        attempt_timeout: float | None = None,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError('endpoint must be "http(s)://host:port"')
        try:
            url = httpx.URL(endpoint)
        except httpx.InvalidURL:
            raise ValueError('endpoint must be "http(s)://host:port"') from None
        if url.userinfo:
            # Credentials go in the token, and an endpoint is repeated in error messages.
            raise ValueError("endpoint must not carry user:password@")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        if attempt_timeout is not None and attempt_timeout <= 0:
            raise ValueError("attempt_timeout must be positive")
        self.attempt_timeout = attempt_timeout
        self.endpoint = endpoint.rstrip("/")
        self.timeout = float(timeout)
        self.retries = retries
        self._token = token
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not a secret
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        # Never the token: only whether there is one.
        auth = "token=***" if self._token else "token=None"
        return f"{type(self).__name__}({self.endpoint!r}, {auth}, timeout={self.timeout:g})"

    def _attempts(self, call: Call[Any], deadline: float) -> Attempts:
        return Attempts(
            call,
            endpoint=self.endpoint,
            deadline=deadline,
            timeout=self.timeout,
            retries=self.retries,
            attempt_timeout=self.attempt_timeout,
            secret=self._token,
            rng=self._rng,
        )


def _request_args(call: Call[Any], timeout: httpx.Timeout) -> dict[str, Any]:
    return {
        "method": call.method,
        "url": call.path,
        "params": dict(call.query) if call.query else None,
        "json": dict(call.body) if call.body is not None else None,
        "timeout": timeout,
    }


@final
class Client(_Api):
    """The synchronous client of kms-hsm's REST API; a context manager.

    ``endpoint`` is the REST base URL (``https://kms.example:8443``); ``token`` goes as
    ``Authorization: Bearer``; ``timeout`` is each call's whole deadline, retries and
    Operation polls included; ``retries`` is how many times a failed attempt may be sent
    again; ``verify`` is False, True (the system's CAs), a CA bundle path, or an
    ``ssl.SSLContext`` (which may hold a client certificate for mutual TLS);
    ``attempt_timeout`` caps one attempt, so that a hung attempt of a call that is safe to
    repeat is sent again within the deadline. Thread-safe: share one per process.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        verify: bool | str | ssl.SSLContext = True,
        attempt_timeout: float | None = None,
    ) -> None:
        super().__init__(
            endpoint,
            token=token,
            timeout=timeout,
            retries=retries,
            verify=verify,
            attempt_timeout=attempt_timeout,
        )
        transport = httpx.HTTPTransport(verify=_ssl(verify), socket_options=_SOCKET_OPTIONS)
        self._http = httpx.Client(
            base_url=self.endpoint, headers=self._headers, transport=transport, timeout=timeout
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _attempt(self, call: Call[Any], timeout: httpx.Timeout) -> httpx.Response:
        """One request, its answer read whole before the attempt's time is up.

        httpx's timeouts bound each read, not the attempt: the body is read chunk by chunk
        and the attempt given up once its time has passed, so a server that trickles its
        answer cannot hold the call far past the deadline. (Headers trickled a byte at a
        time are bounded only per read; the async client bounds the whole attempt.)
        """
        end = time.monotonic() + float(timeout.read or 0)
        with self._http.stream(**_request_args(call, timeout)) as streamed:
            body = bytearray()
            for chunk in streamed.iter_bytes():
                body += chunk
                if time.monotonic() > end:
                    raise httpx.ReadTimeout("attempt timed out", request=streamed.request)
        headers = [
            (name, value)
            for name, value in streamed.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            streamed.status_code, headers=headers, content=bytes(body), request=streamed.request
        )

    def _send(self, call: Call[Any], deadline: float) -> Any:
        attempts = self._attempts(call, deadline)
        while True:
            try:
                response = self._attempt(call, attempts.http_timeout())
            except httpx.TransportError as exc:
                outcome: Any = attempts.on_transport_error(exc)
            else:
                outcome = attempts.on_response(response)
            if not isinstance(outcome, Retry):
                return outcome
            time.sleep(outcome.delay)

    def _execute(self, call: Call[T]) -> T:
        deadline = time.monotonic() + self.timeout
        data = self._send(call, deadline)
        if not call.operation:
            return _parse(call, data)
        op = _operation(data)
        polls = 0
        while not op.done:
            time.sleep(poll_delay(polls, deadline, op.id, self.timeout))
            polls += 1
            op = _operation(self._send(calls.get_operation(op.id), deadline))
        return _operation_result(call, op)

    def _bind(
        self, build: Callable[P, Call[T]], name: str, signature: inspect.Signature
    ) -> Callable[P, T]:
        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return self._execute(build(*args, **kwargs))

        method.__name__ = name
        method.__signature__ = signature  # type: ignore[attr-defined]
        return method

    def _bind_pages(
        self, build: Callable[P, Call[Page[T]]], name: str, signature: inspect.Signature
    ) -> Callable[P, Iterator[T]]:
        def method(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
            while True:
                page = self._execute(build(*args, **kwargs))
                yield from page.items
                if not page.next_page_token:
                    return
                kwargs["page_token"] = page.next_page_token

        method.__name__ = name
        method.__doc__ = f"Every item of {build.__name__}, page after page."
        method.__signature__ = signature  # type: ignore[attr-defined]
        return method


@final
class AsyncClient(_Api):
    """The asyncio (anyio) client of kms-hsm's REST API; the same methods as ``Client``,
    ``async``; an async context manager (``aclose()``)."""

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        verify: bool | str | ssl.SSLContext = True,
        attempt_timeout: float | None = None,
    ) -> None:
        super().__init__(
            endpoint,
            token=token,
            timeout=timeout,
            retries=retries,
            verify=verify,
            attempt_timeout=attempt_timeout,
        )
        transport = httpx.AsyncHTTPTransport(verify=_ssl(verify), socket_options=_SOCKET_OPTIONS)
        self._http = httpx.AsyncClient(
            base_url=self.endpoint, headers=self._headers, transport=transport, timeout=timeout
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def close(self) -> None:
        """Close the connections (the same as ``aclose``)."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call[Any], deadline: float) -> Any:
        attempts = self._attempts(call, deadline)
        while True:
            timeout = attempts.http_timeout()
            outcome: Any
            try:
                # httpx's timeouts bound each read, not the attempt: a server that trickles
                # a byte at a time would hold the call past its deadline.
                with anyio.fail_after(timeout.read):
                    response = await self._http.request(**_request_args(call, timeout))
            except TimeoutError:
                outcome = attempts.on_transport_error(httpx.ReadTimeout("attempt timed out"))
            except httpx.TransportError as exc:
                outcome = attempts.on_transport_error(exc)
            else:
                outcome = attempts.on_response(response)
            if not isinstance(outcome, Retry):
                return outcome
            await anyio.sleep(outcome.delay)

    async def _execute(self, call: Call[T]) -> T:
        deadline = time.monotonic() + self.timeout
        data = await self._send(call, deadline)
        if not call.operation:
            return _parse(call, data)
        op = _operation(data)
        polls = 0
        while not op.done:
            await anyio.sleep(poll_delay(polls, deadline, op.id, self.timeout))
            polls += 1
            op = _operation(await self._send(calls.get_operation(op.id), deadline))
        return _operation_result(call, op)

    def _bind(
        self, build: Callable[P, Call[T]], name: str, signature: inspect.Signature
    ) -> Callable[P, Awaitable[T]]:
        @functools.wraps(build)
        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self._execute(build(*args, **kwargs))

        method.__name__ = name
        method.__signature__ = signature  # type: ignore[attr-defined]
        return method

    def _bind_pages(
        self, build: Callable[P, Call[Page[T]]], name: str, signature: inspect.Signature
    ) -> Callable[P, AsyncIterator[T]]:
        async def method(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
            while True:
                page = await self._execute(build(*args, **kwargs))
                for item in page.items:
                    yield item
                if not page.next_page_token:
                    return
                kwargs["page_token"] = page.next_page_token

        method.__name__ = name
        method.__doc__ = f"Every item of {build.__name__}, page after page."
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation="Async" + str(signature.return_annotation)
        )
        return method
