"""The Python blocks of docs/client.md, run in order against the session server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "client.md"


def test_examples_run(base_url: str, admin_token: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    # The documented placeholders: the endpoint, the token, the CA (plain HTTP here).
    namespace: dict[str, Any] = {"endpoint": base_url, "token": admin_token, "ca_file": False}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["opened"].plaintext == b"card 4111..."
    assert len(namespace["data_key"]) == 32 and namespace["sealed_data_key"]
