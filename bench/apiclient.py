"""A small JSON-over-HTTP client for set-up and probes (not for load: that is wrk's job)."""

from __future__ import annotations

import base64
from typing import Any

import httpx


class RequestFailed(Exception):
    """A non-2xx answer (or no answer); ``str()`` shows the exact request and response."""

    def __init__(self, method: str, url: str, body: bytes, status: int | None, answer: str):
        self.status = status
        super().__init__(
            f"{method} {url}\nrequest body: {body.decode(errors='replace')}\n"
            f"-> {status if status is not None else 'no response'} {answer}"
        )


def b64(data: bytes) -> str:
    """Standard padded base64, as the API sends bytes."""
    return base64.b64encode(data).decode("ascii")


class ApiClient:
    """POSTs JSON to one server, with the bearer token when there is one."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url
        self.authorization = headers.get("Authorization")
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def post_raw(self, path: str, body: bytes) -> httpx.Response:
        """One POST; transport errors propagate."""
        return self._http.post(path, content=body)

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        """POST and return the JSON answer; anything but 2xx raises ``RequestFailed``."""
        url = self.base_url + path
        try:
            response = self.post_raw(path, body)
        except httpx.HTTPError as exc:
            raise RequestFailed("POST", url, body, None, repr(exc)) from None
        if not response.is_success:
            raise RequestFailed("POST", url, body, response.status_code, response.text)
        answer: dict[str, Any] = response.json()
        return answer

    def get(self, path: str) -> dict[str, Any]:
        """GET and return the JSON answer; anything but 2xx raises ``RequestFailed``."""
        url = self.base_url + path
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise RequestFailed("GET", url, b"", None, repr(exc)) from None
        if not response.is_success:
            raise RequestFailed("GET", url, b"", response.status_code, response.text)
        answer: dict[str, Any] = response.json()
        return answer

    def responds(self, path: str = "/") -> bool:
        """True when anything answers HTTP at ``path`` (any status)."""
        try:
            self._http.get(path, timeout=2.0)
        except httpx.HTTPError:
            return False
        return True

    def create_key(self, name: str, algorithm: str) -> str:
        """Create a key in folder ``b1g``; returns its id."""
        body = f'{{"folderId":"b1g","name":"{name}","defaultAlgorithm":"{algorithm}"}}'
        operation = self.post("/kms/v1/keys", body.encode())
        key_id: str = operation["response"]["id"]
        return key_id

    def create_key_pair(self, collection: str, name: str, field: str, algorithm: str) -> str:
        """Create an asymmetric key (``collection``: its REST path) in folder ``b1g``; its id."""
        body = f'{{"folderId":"b1g","name":"{name}","{field}":"{algorithm}"}}'
        operation = self.post(collection, body.encode())
        key_id: str = operation["response"]["id"]
        return key_id

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
