"""Look into (or plant an object in) a token from a separate process.

Usage: python -m tests.token_tool TOKEN_DIR list
       python -m tests.token_tool TOKEN_DIR plant OBJECT_ID LABEL
       python -m tests.token_tool TOKEN_DIR destroy OBJECT_ID
SOFTHSM2_CONF is read once per process, so tests that inspect another token than the
session's use this in a subprocess.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kms_hsm.crypto.pkcs11.hsm import HsmCrypto
from kms_hsm.crypto.pkcs11.sessions import SessionManager


def main() -> None:
    token_dir, command, *rest = sys.argv[1:]
    os.environ["SOFTHSM2_CONF"] = str(Path(token_dir) / "softhsm2.conf")
    pin = (Path(token_dir) / "user-pin").read_text().strip()
    module = os.environ.get("KMS_HSM_PKCS11_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")
    sessions = SessionManager(module, "kms-hsm", pin)
    sessions.start()
    hsm = HsmCrypto(sessions)
    try:
        if command == "list":
            print(json.dumps(sorted(i.decode("ascii", "replace") for i in hsm.find_key_ids())))
        elif command == "plant":
            object_id, label = rest
            hsm.generate_key(object_id.encode(), label)
            print("planted")
        elif command == "destroy":
            print("destroyed" if hsm.destroy_key(rest[0].encode()) else "absent")
    finally:
        sessions.close()


if __name__ == "__main__":
    main()
