"""Loading a PKCS#11 module with OS locking, and taking it down again.

python-pkcs11 0.10 calls ``C_Initialize(NULL)``, which tells the module that the
application is single-threaded; SoftHSM2 then turns its mutexes off while python-pkcs11
releases the GIL around every call, and two threads corrupt its heap (measured, see
shared/design/softhsm-facts.md Q2). ``OsLockingLib`` passes ``CKF_OS_LOCKING_OK``
instead. Because the Cython ``initialized`` flag stays False, python-pkcs11 never calls
``C_Finalize`` itself: ``finalize_module`` does, through ctypes on the same dlopen handle.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from pkcs11 import _pkcs11

CKR_OK = 0x0
CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2


class _InitializeArgs(ctypes.Structure):
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


class ModuleError(Exception):
    """C_Initialize or C_Finalize returned an error code."""

    def __init__(self, call: str, rv: int) -> None:
        self.rv = rv
        super().__init__(f"{call} returned 0x{rv:x}")


# PKCS#11 state is per process: users of one module in one process (a session manager,
# a pre-flight check, a test) share it, so C_Finalize waits for the last of them.
_users: dict[str, int] = {}
_users_lock = threading.Lock()


def initialize_module(path: str) -> None:
    """Call ``C_Initialize`` with ``CKF_OS_LOCKING_OK`` on the module at ``path``."""
    with _users_lock:
        module = ctypes.CDLL(path)
        args = _InitializeArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
        rv = module.C_Initialize(ctypes.byref(args))
        if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
            raise ModuleError("C_Initialize", rv)
        _users[path] = _users.get(path, 0) + 1


def finalize_module(path: str, *, force: bool = False) -> None:
    """Release one user; the last one (or ``force``, after a device fault) calls C_Finalize."""
    with _users_lock:
        remaining = max(_users.get(path, 0) - 1, 0)
        _users[path] = 0 if force else remaining
        if remaining and not force:
            return
        module = ctypes.CDLL(path)
        rv = module.C_Finalize(None)
        if rv not in (CKR_OK, CKR_CRYPTOKI_NOT_INITIALIZED):
            raise ModuleError("C_Finalize", rv)


class OsLockingLib(_pkcs11.lib):  # type: ignore[misc,unused-ignore]
    """python-pkcs11's ``lib`` whose ``initialize`` asks the module for OS locking."""

    def __init__(self, so: str) -> None:
        self._so_path = so
        super().__init__(so)

    def initialize(self) -> None:
        """Replace python-pkcs11's ``C_Initialize(NULL)`` (called from ``__init__``)."""
        initialize_module(self._so_path)


def load(path: str) -> Any:
    """dlopen the module at ``path`` and initialise it with OS locking.

    Not cached: after ``finalize_module`` a fresh ``load`` gives a fresh function table,
    which is how the session manager recovers from a device that went away.
    """
    return OsLockingLib(path)
