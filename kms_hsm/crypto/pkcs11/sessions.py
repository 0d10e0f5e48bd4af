"""The PKCS#11 session manager: login, a bounded session pool, handle caches, recovery.

Facts it is built on (shared/design/softhsm-facts.md, measured on SoftHSM2 2.6.1):

* Login belongs to the process, not the session, and closing the logged-in session logs
  every session out. One *anchor* session logs in at start and lives until shutdown;
  pooled sessions are opened without a PIN and inherit the login.
* Looking a key up by attribute costs ~300 us, so every pooled session caches the key
  objects it has found (a python-pkcs11 key object is bound to one session).
* After the device goes away every call fails until ``C_Finalize`` + ``C_Initialize``.
  A device-class failure makes the manager reinitialise once (new module load, new
  login, empty caches, a new *generation*) and retry the call once; otherwise the caller
  gets ``BackendUnavailable``. While the token stays unreachable, reinit attempts are
  spaced out so that requests fail fast instead of queueing behind them.
* The manager must be created in the process that uses it (after any fork): nothing here
  runs at import.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from kms_hsm.crypto.pkcs11 import library
from kms_hsm.crypto.pkcs11.direct import DirectCalls
from kms_hsm.crypto.pkcs11.errors import FailureKind, failure_kind, is_refusal, to_kms_error
from kms_hsm.errors import BackendUnavailable, FailedPrecondition, InvalidArgument, KmsError

log = logging.getLogger(__name__)

T = TypeVar("T")


class KeyMaterialMissing(FailedPrecondition):
    """The token holds no object for a version that the database says exists."""

    default_message = "the key version's material is not present in the HSM"


class KeyHandles:
    """Key objects found in the token, shared by every session of one generation.

    Finding a key by attribute is a linear scan in SoftHSM2, and a slow one: 157 ms per
    ``C_FindObjects`` by ``CKA_ID`` with 10,000 objects, measured here, against 1.2 s to
    list all of them and read every ``CKA_ID``. So the first miss lists every secret key
    once (per process and generation); later misses (keys made since) find one key. A key
    object stays bound to the session that found it; that is safe because the session
    manager runs one token operation at a time.

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
    """

    def __init__(self, recheck: float = 30.0, direct: DirectCalls | None = None) -> None:
        self._keys: dict[bytes, Any] = {}
        self._listed = False
        self._recheck = recheck
        self._direct = direct
        # object id -> (session copy, or the token key itself; when to look at the token again)
        self._working: dict[bytes, tuple[Any, float]] = {}

    def get(self, object_id: bytes, session: Any) -> Any:
        """The token key with ``CKA_ID == object_id``, found through ``session`` on a miss."""
        found = self._keys.get(object_id)
        if found is None and not self._listed:
            self._list_all(session)
            found = self._keys.get(object_id)
        if found is None:
            found = self._keys[object_id] = _find_token_key(session, object_id)
        return found

    def working(self, object_id: bytes, session: Any) -> Any:
        """The key to compute with: a session copy of the token key where the token allows."""
        now = time.monotonic()
        entry = self._working.get(object_id)
        if entry is not None and now < entry[1]:
            return entry[0]
        token_key = self.get(object_id, session)
        if entry is None:
            working = _session_copy(token_key)
        else:
            # Raises ObjectHandleInvalid when the token key has been destroyed meanwhile
            # (the caller then forgets both).
            token_key[Attribute.CLASS]
            working = entry[0]
        self._working[object_id] = (working, now + self._recheck)
        return working

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
        token_key = self._keys.pop(object_id, None)
        entry = self._working.pop(object_id, None)
        if entry is not None and entry[0] is not token_key:
            with contextlib.suppress(p11.PKCS11Error):
                entry[0].destroy()


# Token objects only: the session copies of this process carry the same CKA_ID.
_TOKEN_AES_KEYS = {
    Attribute.CLASS: ObjectClass.SECRET_KEY,
    Attribute.KEY_TYPE: KeyType.AES,
    Attribute.TOKEN: True,
}


def _find_token_key(session: Any, object_id: bytes) -> Any:
    found = list(session.get_objects({**_TOKEN_AES_KEYS, Attribute.ID: object_id}))
    if not found:
        raise p11.NoSuchKey(f"no token key with CKA_ID {object_id!r}")
    if len(found) > 1:
        raise p11.MultipleObjectsReturned(f"{len(found)} token keys with CKA_ID {object_id!r}")
    return found[0]


def _session_copy(token_key: Any) -> Any:
    try:
        return token_key.copy({Attribute.TOKEN: False})
    except p11.PKCS11Error as exc:
        if not is_refusal(exc):
            raise
        log.debug("the token refused a session copy (%s): using the token key", exc)
        return token_key


@dataclass
class PooledSession:
    """One open session, and the generation's shared key objects and direct calls."""

    session: Any
    generation: int
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

    def forget(self, object_id: bytes) -> None:
        """Drop a key from the shared cache."""
        self.handles.forget(object_id)


@dataclass
class SessionStats:
    """Counters for metrics and tests."""

    sessions_opened: int = 0
    reinitializations: int = 0
    failed_reinitializations: int = 0
    retries: int = 0


class SessionManager:
    """Owns the PKCS#11 module, the login anchor and a bounded pool of sessions.

    Thread-safe: FastAPI's threadpool, the scheduler and test threads share one manager.
    """

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: str,
        *,
        pool_size: int = 8,
        lease_timeout: float = 10.0,
        startup_timeout: float = 20.0,
        reinit_interval: float = 0.5,
        key_copy_recheck: float = 30.0,
    ) -> None:
        if pool_size < 1:
            raise InvalidArgument("pool_size must be at least 1")
        self._module_path = module_path
        self._token_label = token_label
        self._pin = pin
        self._pool_size = pool_size
        self._lease_timeout = lease_timeout
        self._startup_timeout = startup_timeout
        self._reinit_interval = reinit_interval
        self._key_copy_recheck = key_copy_recheck
        self._lock = threading.Lock()
        # Idle sessions, most recently used last; changed only under ``_lock``.
        self._idle: list[PooledSession] = []
        # Leases not yet handed out (at most pool_size at once); changed under ``_lock``.
        self._free_slots = pool_size
        self._slot_freed = threading.Condition(self._lock)
        self._inflight = 0
        self._quiesce = threading.Condition(self._lock)
        self._reinitializing = False
        self._generation = 0
        self._up = False
        self._last_failed_reinit = 0.0
        self._last_reload = 0.0
        self._lib: Any = None
        self._token: Any = None
        self._anchor: Any = None
        self._direct = DirectCalls(module_path)
        self._handles = KeyHandles(self._key_copy_recheck, self._direct)
        # One token operation at a time in this process: key objects are shared across
        # sessions, and a session must not run two operations at once. The token itself
        # does ~30k AES-GCM operations a second, far above what the HTTP layer asks for.
        self._ops = threading.Lock()
        self._op_started: float | None = None
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
                    self._open_locked()
                log.info(
                    "HSM ready: token '%s' via %s (attempt %d)",
                    self._token_label,
                    self._module_path,
                    attempt,
                )
                return
            except _FatalLogin as exc:
                raise BackendUnavailable(
                    f"HSM login to token '{self._token_label}' failed: {exc}"
                ) from None
            except (p11.PKCS11Error, library.ModuleError) as exc:
                self._close_quietly()
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
        """Close every session, log out and finalise the module."""
        with self._lock:
            self._up = False
            self._close_quietly()

    @property
    def generation(self) -> int:
        """Increases by one at every successful (re)initialisation."""
        return self._generation

    def _open_locked(self) -> None:
        self._lib = library.load(self._module_path)
        self._token = self._lib.get_token(token_label=self._token_label)
        try:
            self._anchor = self._token.open(rw=True, user_pin=self._pin)
        except p11.UserAlreadyLoggedIn:
            self._anchor = self._token.open(rw=True)
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked) as exc:
            raise _FatalLogin(type(exc).__name__) from None
        self._self_test(self._anchor)
        self._handles = KeyHandles(self._key_copy_recheck, self._direct)
        self._generation += 1
        self._up = True
        self._idle = []

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
        idle, self._idle = self._idle, []
        for pooled in idle:
            with contextlib.suppress(Exception):
                pooled.session.close()
        if self._anchor is not None:
            with contextlib.suppress(Exception):
                self._anchor.close()
        self._anchor = None
        self._token = None
        if self._lib is not None or force:
            with contextlib.suppress(Exception):
                library.finalize_module(self._module_path, force=force)
        self._lib = None

    def _reinitialize(self, seen_generation: int, cause: str) -> None:
        """Finalise and reopen everything, unless another thread already did."""
        with self._lock:
            if self._generation != seen_generation and self._up:
                return
            now = time.monotonic()
            if not self._up and now - self._last_failed_reinit < self._reinit_interval:
                raise BackendUnavailable(log_detail="HSM down; waiting before the next reinit")
            log.warning("reinitialising PKCS#11 (%s)", cause)
            self._reinitializing = True
            try:
                # Never finalise under a call in flight: SoftHSM frees state those calls use.
                idle = self._quiesce.wait_for(
                    lambda: self._inflight == 0, timeout=self._lease_timeout
                )
                if not idle:
                    # A call is still inside the module (a hung token): finalising under it
                    # could crash the process. Stay down and try again later.
                    self._up = False
                    self._last_failed_reinit = time.monotonic()
                    raise BackendUnavailable(log_detail="a PKCS#11 call is still in flight")
                self._up = False
                # The device is gone for every user of the module in this process.
                self._close_quietly(force=True)
                try:
                    self._open_locked()
                except (p11.PKCS11Error, library.ModuleError, _FatalLogin) as exc:
                    self._close_quietly()
                    self._last_failed_reinit = time.monotonic()
                    self.stats.failed_reinitializations += 1
                    log.warning("HSM reinitialisation failed: %s: %s", type(exc).__name__, exc)
                    raise BackendUnavailable(log_detail=f"reinit failed: {exc}") from None
                self.stats.reinitializations += 1
                log.warning("HSM reinitialised (generation %d)", self._generation)
            finally:
                self._reinitializing = False
                self._quiesce.notify_all()

    # ----------------------------------------------------------------- leasing

    @contextlib.contextmanager
    def _lease(self) -> Iterator[PooledSession]:
        with self._lock:
            if not self._free_slots and not self._slot_freed.wait_for(
                lambda: self._free_slots > 0, timeout=self._lease_timeout
            ):
                raise BackendUnavailable(
                    log_detail="no PKCS#11 session free within the lease timeout"
                )
            self._free_slots -= 1
            # Counted in flight only after any reinitialisation: it waits for zero.
            if self._reinitializing:
                self._quiesce.wait_for(lambda: not self._reinitializing, timeout=10.0)
            generation = self._generation
            pooled = self._idle.pop() if self._up and self._idle else None
            self._inflight += 1
        returned: PooledSession | None = None
        try:
            if not self._up:
                raise p11.DeviceRemoved("HSM is down")
            if pooled is None:
                pooled = PooledSession(
                    self._token.open(rw=True), generation, self._handles, self._direct
                )
                self.stats.sessions_opened += 1
            pooled.last_key = None
            keep = True
            try:
                yield pooled
            except p11.PKCS11Error as exc:
                kind = failure_kind(exc, decrypting=True)
                if kind is FailureKind.DEVICE:
                    keep = False
                elif kind is FailureKind.OBJECT and pooled.last_key is not None:
                    pooled.forget(pooled.last_key)
                raise
            finally:
                if keep:
                    returned = pooled
        finally:
            with self._lock:
                if returned is not None and returned.generation == self._generation:
                    self._idle.append(returned)
                self._inflight -= 1
                if self._inflight == 0:
                    self._quiesce.notify_all()
                self._free_slots += 1
                self._slot_freed.notify()

    def run(self, operation: Callable[[PooledSession], T], *, decrypting: bool = False) -> T:
        """Run ``operation`` on a leased session, recovering from device and handle faults.

        Args:
            operation: does the PKCS#11 calls; may run twice, so it must not have other
                side effects before its last call succeeds.
            decrypting: the call authenticates caller data, so a ``GeneralError`` means
                "tag mismatch" (``DecryptionFailed``) rather than a device fault.

        Raises:
            DecryptionFailed, KeyMaterialMissing, BackendUnavailable.
        """
        missing_once = False
        for attempt in (1, 2, 3):
            generation = self._generation
            try:
                # Behind a call that hangs in the token: 503 at once once it has run past
                # the timeout, and never wait longer than the timeout for it.
                started = self._op_started
                stuck = started is not None and time.monotonic() - started > self._lease_timeout
                if stuck or not self._ops.acquire(timeout=self._lease_timeout):
                    raise BackendUnavailable(
                        log_detail="a PKCS#11 call has been running longer than the timeout"
                    )
                self._op_started = time.monotonic()
                try:
                    with self._lease() as pooled:
                        return operation(pooled)
                finally:
                    self._op_started = None
                    self._ops.release()
            except KmsError:
                raise
            except p11.PKCS11Error as exc:
                kind = failure_kind(exc, decrypting=decrypting)
                if kind is FailureKind.INPUT:
                    raise to_kms_error(exc, decrypting=decrypting) from None
                missing = isinstance(exc, p11.NoSuchKey)
                if attempt == 3 or (kind is FailureKind.DEVICE and attempt == 2):
                    if missing:
                        raise KeyMaterialMissing(log_detail=str(exc)) from None
                    raise to_kms_error(exc, decrypting=decrypting) from None
                self.stats.retries += 1
                if kind is FailureKind.DEVICE:
                    self._reinitialize(generation, type(exc).__name__)
                elif missing and missing_once:
                    # SoftHSM2's file store can miss an object that another process made
                    # while this one was writing too (its generation counter is not
                    # atomic across processes); reloading the module re-reads the store.
                    # But a reload logs in again, which rewrites the token file that the
                    # other processes are reading: at most one reload a second, else a
                    # short wait (seen in CI: two HSM agents reloading each other 8,500
                    # times in a few seconds).
                    if time.monotonic() - self._last_reload >= _RELOAD_SPACING:
                        self._last_reload = time.monotonic()
                        self._reinitialize(generation, "key object not visible; reloading")
                    else:
                        time.sleep(_MISSING_RETRY_WAIT)
                missing_once = missing_once or missing
        raise AssertionError("unreachable")


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
