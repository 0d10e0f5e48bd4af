"""The PKCS#11 session manager: login, one session, a key-handle cache, recovery.

Facts it is built on (shared/design/softhsm-facts.md, measured on SoftHSM2 2.6.1):

* Login belongs to the process, not the session, and closing the logged-in session logs
  every session out. The manager keeps one session: it logs in at start, every token
  operation runs on it, and only ``close`` and a reinitialisation (which logs in again)
  close it.
* One token operation at a time: ``run`` holds one lock over the call, its retries and any
  reinitialisation, so nothing is ever finalised under a call in flight. In the service
  the only user is the HSM agent process, with one thread; a call that hangs in the token
  is its worker's to bound (it kills the agent after the call timeout). Tests and tools
  that call from several threads wait their turn. Parallel token calls are what processes
  are for: on SoftHSM2 a second thread gains ~1.2x, a second process ~1.8x.
* Looking a key up by attribute costs ~300 us, and more with every object in the token
  (a linear scan: 28 ms at 1,500 token keys), so the manager caches the key objects it has
  found or made (``KeyHandles``).
* After the device goes away every call fails until ``C_Finalize`` + ``C_Initialize``.
  A device-class failure makes the manager reinitialise once (new module load, new
  login, empty caches) and retry the call once; otherwise the caller gets
  ``BackendUnavailable``. While the token stays unreachable, reinit attempts are spaced
  out so that requests fail fast instead of each waiting for one.
* The manager must be created in the process that uses it (after any fork): nothing here
  runs at import.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from kms_hsm import metrics
from kms_hsm.crypto.pkcs11 import library
from kms_hsm.crypto.pkcs11.direct import DirectCalls
from kms_hsm.crypto.pkcs11.errors import FailureKind, failure_kind, is_refusal, to_kms_error
from kms_hsm.errors import BackendUnavailable, Internal, KeyMaterialMissing, KmsError, LoginRefused

log = logging.getLogger(__name__)

T = TypeVar("T")


class KeyHandles:
    """Key objects found in the token through the manager's session, dropped with it.

    Finding a key by attribute is a linear scan in SoftHSM2, and a slow one: 157 ms per
    ``C_FindObjects`` by ``CKA_ID`` with 10,000 objects, measured here, against 1.2 s to
    list all of them and read every ``CKA_ID``. So the first miss lists every secret key
    once (per process, and again after a reinitialisation); later misses (keys made since)
    find one key. A key object stays bound to the session that found it.

    Computing keys (``working``) are in-memory session copies of the token keys. SoftHSM2's
    file store opens, locks and reads the token's generation file and the key's own file
    on every use of a token object (strace: 2 ``openat``, 6 ``fcntl``, 2 ``read`` per
    AES-GCM call), and not for a session object: AES-GCM took 44 us with a token key and
    22 us with its copy here; a copy costs ~140 us once. The copy keeps the token key's
    ``CKA_SENSITIVE``/``CKA_NEVER_EXTRACTABLE`` and dies with its session (at the latest
    at the process's end). A copy would outlive its token object if another process
    destroyed the version, so the token object is looked at again every ``recheck``
    seconds; once it has gone, the copy goes too. Keys that the token will not copy (made
    with ``CKA_MODIFIABLE=False`` before copies were used) are used as they are.

    At most ``max_copies`` keys have a copy: using one more destroys the copy of the least
    recently used, so that key material held in the agent's memory stays bounded however
    many keys the token holds. A copy in the cache costs a find ~1.6 us more (a token
    object ~19 us; measured at 1,500 each). Only objects that ``copy`` made are destroyed
    here, and only after the token says they are session objects.
    """

    def __init__(
        self, recheck: float = 30.0, direct: DirectCalls | None = None, max_copies: int = 1024
    ) -> None:
        if max_copies < 1:
            raise ValueError("max_copies must be at least 1")
        self._keys: dict[bytes, Any] = {}
        self._listed = False
        self._recheck = recheck
        self._direct = direct
        self._max_copies = max_copies
        # object id -> (session copy, or the token key itself; when to look at the token
        # again; True for a copy), least recently used first.
        self._working: OrderedDict[bytes, tuple[Any, float, bool]] = OrderedDict()
        # Private keys of key pairs, found one at a time (no listing: they are few, and
        # the symmetric keys' listing must not grow with them).
        self._private: dict[bytes, Any] = {}

    def get(self, object_id: bytes, session: Any) -> Any:
        """The token key with ``CKA_ID == object_id``, found through ``session`` on a miss."""
        found = self._keys.get(object_id)
        if found is None and not self._listed:
            self._list_all(session)
            found = self._keys.get(object_id)
        if found is None:
            found = self._keys[object_id] = _find_token_key(session, object_id)
        return found

    def private(self, object_id: bytes, session: Any) -> Any:
        """The token private key with ``CKA_ID == object_id``, found through ``session`` once."""
        found = self._private.get(object_id)
        if found is None:
            found = _find_one(session, {**_TOKEN_PRIVATE_KEYS, Attribute.ID: object_id})
            if len(self._private) >= _MAX_PRIVATE_HANDLES:
                self._private.clear()  # handles only, refound on use: bounded and simple
            self._private[object_id] = found
        return found

    def add_private(self, object_id: bytes, private_key: Any) -> None:
        """Remember a private key this session has just made."""
        self._private[object_id] = private_key

    def add(self, object_id: bytes, token_key: Any) -> None:
        """Remember a token key this session has just made: no scan to find it later."""
        self._keys[object_id] = token_key

    def working(self, object_id: bytes, session: Any) -> Any:
        """The key to compute with: a session copy of the token key where the token allows."""
        now = time.monotonic()
        entry = self._working.get(object_id)
        if entry is not None and now < entry[1]:
            self._working.move_to_end(object_id)
            return entry[0]
        token_key = self.get(object_id, session)
        if entry is None:
            working, copied = _session_copy(token_key)
        else:
            # Raises ObjectHandleInvalid when the token key has been destroyed meanwhile
            # (the caller then forgets both).
            token_key[Attribute.CLASS]
            working, copied = entry[0], entry[2]
        self._working[object_id] = (working, now + self._recheck, copied)
        self._working.move_to_end(object_id)
        while len(self._working) > self._max_copies:
            _, (evicted, _, evicted_copied) = self._working.popitem(last=False)
            if evicted_copied:
                _destroy_copy(evicted)
        return working

    def copies(self) -> int:
        """How many keys have a working key cached (for tests and metrics)."""
        return len(self._working)

    def _list_all(self, session: Any) -> None:
        seen: dict[bytes, Any] = {}
        twice: set[bytes] = set()
        for key in session.get_objects(_TOKEN_AES_KEYS):
            object_id = (
                self._direct.object_id(key)
                if self._direct is not None
                else bytes(key[Attribute.ID])
            )
            if object_id in seen:
                twice.add(object_id)  # left to get_key, which refuses duplicates
            seen[object_id] = key
        for object_id in twice:
            del seen[object_id]
        self._keys.update(seen)
        self._listed = True

    def forget(self, object_id: bytes) -> None:
        """Drop one cached key and its copy (destroyed, or a handle went stale)."""
        self._keys.pop(object_id, None)
        self._private.pop(object_id, None)
        entry = self._working.pop(object_id, None)
        if entry is not None and entry[2]:
            _destroy_copy(entry[0])


# Token objects only: the session copies of this process carry the same CKA_ID.
_TOKEN_AES_KEYS = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: KeyType.AES,
    Attribute.TOKEN: True,
}


_TOKEN_PRIVATE_KEYS = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.TOKEN: True}
_MAX_PRIVATE_HANDLES = 4096


def _find_token_key(session: Any, object_id: bytes) -> Any:
    return _find_one(session, {**_TOKEN_AES_KEYS, Attribute.ID: object_id})


def _find_one(session: Any, template: dict[Attribute, Any]) -> Any:
    """The one token object matching ``template``; NoSuchKey if none, an error if several."""
    found = list(session.get_objects(template))
    object_id = template[Attribute.ID]
    if not found:
        raise p11.NoSuchKey(f"no token key with CKA_ID {object_id!r}")
    if len(found) > 1:
        # Not a device fault: reloading the module would find them again, at a login each.
        raise Internal(log_detail=f"{len(found)} token keys with CKA_ID {object_id!r}")
    return found[0]


def _session_copy(token_key: Any) -> tuple[Any, bool]:
    """(the key to compute with, True if it is a session copy)."""
    try:
        return token_key.copy({Attribute.TOKEN: False}), True
    except p11.PKCS11Error as exc:
        if not is_refusal(exc):
            raise
        log.debug("the token refused a session copy (%s): using the token key", exc)
        return token_key, False


def _destroy_copy(copy: Any) -> None:
    # Destroying is for ever: look at CKA_TOKEN first, so that a mix-up in the cache can
    # never take a token key with it. A copy that cannot be destroyed dies with the session.
    with contextlib.suppress(p11.PKCS11Error):
        if not copy[Attribute.TOKEN]:
            copy.destroy()


@dataclass
class TokenSession:
    """The manager's one session, with its key objects and direct calls."""

    session: Any
    handles: KeyHandles
    direct: DirectCalls
    last_key: bytes | None = None

    def key(self, object_id: bytes) -> Any:
        """The token key with ``CKA_ID == object_id``, cached for the whole process."""
        self.last_key = object_id
        return self.handles.get(object_id, self.session)

    def working_key(self, object_id: bytes) -> Any:
        """What to encrypt, decrypt and wrap with: the token key's session copy if it has one."""
        self.last_key = object_id
        return self.handles.working(object_id, self.session)

    def private_key(self, object_id: bytes) -> Any:
        """The token private key (of a key pair) with ``CKA_ID == object_id``, cached."""
        self.last_key = object_id
        return self.handles.private(object_id, self.session)

    def remember_private(self, object_id: bytes, private_key: Any) -> None:
        """Cache a private key just made through this session."""
        self.handles.add_private(object_id, private_key)

    def forget(self, object_id: bytes) -> None:
        """Drop a key from the cache."""
        self.handles.forget(object_id)

    def remember(self, object_id: bytes, token_key: Any) -> None:
        """Cache a token key just made through this session."""
        self.handles.add(object_id, token_key)


@dataclass
class SessionStats:
    """Counters for metrics and tests."""

    reinitializations: int = 0
    failed_reinitializations: int = 0
    retries: int = 0


class SessionManager:
    """Owns the PKCS#11 module and its one logged-in session; runs one call at a time.

    Thread-safe: callers on other threads wait for the call in progress.
    """

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        *,
        startup_timeout: float = 20.0,
        reinit_interval: float = 0.5,
        key_copy_recheck: float = 30.0,
        session_cache_size: int = 1024,
    ) -> None:
        self._module_path = module_path
        self._token_label = token_label
        self._pin = pin
        self._startup_timeout = startup_timeout
        self._reinit_interval = reinit_interval
        self._key_copy_recheck = key_copy_recheck
        self._session_cache_size = session_cache_size
        # Held over every use of the module: a call with its retries, start, reinit, close.
        self._lock = threading.Lock()
        self._lib: Any = None
        # None while the token is down (not started, closed, or a reinitialisation failed).
        self._session: TokenSession | None = None
        self._last_failed_reinit = 0.0
        self._last_reload = 0.0
        # True after this process changed the token's objects: see _reload_for_missing_key.
        self._wrote = False
        self._direct = DirectCalls(module_path)
        self.stats = SessionStats()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load the module, find the token, log in and self-test; retry until the deadline.

        Raises:
            BackendUnavailable: the token could not be reached before ``startup_timeout``.
        """
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._lock:
                    self._open()
                log.info(
                    "HSM ready: token '%s' via %s (attempt %d)",
                    self._token_label,
                    self._module_path,
                    attempt,
                )
                return
            except _FatalLogin as exc:
                raise LoginRefused(
                    f"HSM login to token '{self._token_label}' failed: {exc}"
                ) from None
            except (p11.PKCS11Error, library.ModuleError) as exc:
                if time.monotonic() + delay > deadline:
                    raise BackendUnavailable(
                        f"HSM not reachable: token '{self._token_label}' via "
                        f"{self._module_path} after {attempt} attempts "
                        f"({type(exc).__name__}: {exc})"
                    ) from None
                log.warning(
                    "HSM not ready (attempt %d: %s: %s); retrying in %.1fs",
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        """Log out, close the session and finalise the module (after any call in progress)."""
        with self._lock:
            self._close_quietly()

    def _open(self) -> None:
        """Load, log in and self-test; on any failure leave everything closed."""
        try:
            self._lib = library.load(self._module_path)
            token = self._lib.get_token(token_label=self._token_label)
            try:
                session = token.open(rw=True, user_pin=self._pin)
            except p11.UserAlreadyLoggedIn:
                session = token.open(rw=True)
            except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked) as exc:
                raise _FatalLogin(type(exc).__name__) from None
            handles = KeyHandles(self._key_copy_recheck, self._direct, self._session_cache_size)
            self._session = TokenSession(session, handles, self._direct)
            self._self_test(session)
        except BaseException:
            self._close_quietly()
            raise

    @staticmethod
    def _self_test(session: Any) -> None:
        """Refuse a token whose RNG returns zeros or whose AES-GCM does not round-trip."""
        sample = session.generate_random(256)
        if sample == bytes(len(sample)):
            raise p11.DeviceError("token RNG returned all zeros")
        key = session.generate_key(KeyType.AES, 256, template=_SESSION_KEY_TEMPLATE)
        try:
            params = GCMParams(bytes(12), b"self-test", 128)
            sealed = key.encrypt(b"kms-hsm", mechanism=Mechanism.AES_GCM, mechanism_param=params)
            opened = key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            if opened != b"kms-hsm":
                raise p11.DeviceError("AES-GCM self-test failed")
        finally:
            key.destroy()

    def _close_quietly(self, *, force: bool = False) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                self._session.session.close()  # the logged-in session: C_Logout too
        self._session = None
        if self._lib is not None or force:
            with contextlib.suppress(Exception):
                library.finalize_module(self._module_path, force=force)
        self._lib = None

    def _reinitialize(self, cause: str) -> None:
        """Finalise and reopen everything; under ``_lock``, so no call is in flight."""
        now = time.monotonic()
        if self._session is None and now - self._last_failed_reinit < self._reinit_interval:
            raise BackendUnavailable(log_detail="HSM down; waiting before the next reinit")
        log.warning("reinitialising PKCS#11 (%s)", cause)
        # The device is gone for every user of the module in this process.
        self._close_quietly(force=True)
        try:
            self._open()
        except (p11.PKCS11Error, library.ModuleError, _FatalLogin) as exc:
            self._last_failed_reinit = time.monotonic()
            self.stats.failed_reinitializations += 1
            metrics.reinitialised(ok=False)
            log.warning("HSM reinitialisation failed: %s: %s", type(exc).__name__, exc)
            raise BackendUnavailable(log_detail=f"reinit failed: {exc}") from None
        self.stats.reinitializations += 1
        metrics.reinitialised(ok=True)
        log.warning("HSM reinitialised (%d so far)", self.stats.reinitializations)

    # ----------------------------------------------------------------- calls

    def run(
        self,
        operation: Callable[[TokenSession], T],
        *,
        decrypting: bool = False,
        writes: bool = False,
    ) -> T:
        """Run ``operation`` on the session, recovering from device and handle faults.

        Waits for any call in progress on another thread.

        Args:
            operation: does the PKCS#11 calls; may run twice, so it must not have other
                side effects before its last call succeeds.
            decrypting: the call authenticates caller data, so a ``GeneralError`` means
                "tag mismatch" (``DecryptionFailed``) rather than a device fault.
            writes: the call creates or destroys token objects.

        Raises:
            DecryptionFailed, KeyMaterialMissing, BackendUnavailable.
        """
        with self._lock:
            missing_once = False
            for attempt in (1, 2, 3):
                session = self._session
                try:
                    if session is None:
                        raise p11.DeviceRemoved("HSM is down")
                    session.last_key = None
                    result = operation(session)
                    self._wrote = self._wrote or writes
                    return result
                except KmsError:
                    raise
                except p11.PKCS11Error as exc:
                    kind = failure_kind(exc, decrypting=decrypting)
                    if kind is FailureKind.INPUT:
                        raise to_kms_error(exc, decrypting=decrypting) from None
                    if kind is FailureKind.OBJECT and session is not None and session.last_key:
                        session.forget(session.last_key)
                    missing = isinstance(exc, p11.NoSuchKey)
                    if attempt == 3 or (kind is FailureKind.DEVICE and attempt == 2):
                        if missing:
                            raise KeyMaterialMissing(log_detail=str(exc)) from None
                        raise to_kms_error(exc, decrypting=decrypting) from None
                    self.stats.retries += 1
                    if kind is FailureKind.DEVICE:
                        self._reinitialize(type(exc).__name__)
                    elif missing and (missing_once or self._wrote):
                        self._reload_for_missing_key()
                    missing_once = missing_once or missing
            raise AssertionError("unreachable")

    def _reload_for_missing_key(self) -> None:
        # SoftHSM2's file store misses an object that another process made while this
        # one was writing too: committing its own change, a process takes the token's
        # generation counter as it finds it on disk, the other process's increment
        # included, so it never re-reads the token's object list for that change.
        # Reloading the module re-reads the store. A process that wrote since its last
        # reload (the agents create and destroy version keys) reloads at the first miss;
        # that is one reload per own write at most. Otherwise a miss may be a key that is
        # really gone, and a reload logs in again, which rewrites the token file that the
        # other processes are reading: at most one reload a second, else a short wait
        # (seen in CI: two HSM agents reloading each other 8,500 times in a few seconds).
        if self._wrote or time.monotonic() - self._last_reload >= _RELOAD_SPACING:
            self._wrote = False
            self._last_reload = time.monotonic()
            self._reinitialize("key object not visible; reloading")
        else:
            time.sleep(_MISSING_RETRY_WAIT)


_RELOAD_SPACING = 1.0
_MISSING_RETRY_WAIT = 0.02


class _FatalLogin(Exception):
    """A PIN problem: retrying would only burn PIN attempts."""


_SESSION_KEY_TEMPLATE = {
    Attribute.TOKEN: False,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.PRIVATE: True,
}
