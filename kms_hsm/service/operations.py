"""Building finished Operations the way Yandex KMS returns them (done at once)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kms_hsm.domain.ids import OPERATION_PREFIX, new_id
from kms_hsm.store.repository import StoredOperation


def finished_operation(
    *,
    key_id: str | None,
    description: str,
    created_by: str,
    now: datetime,
    metadata_type: str,
    metadata: dict[str, Any],
    response_type: str,
    response: dict[str, Any] | None,
) -> StoredOperation:
    """A done=true Operation with a response; types are the proto message names."""
    return StoredOperation(
        id=new_id(OPERATION_PREFIX),
        key_id=key_id,
        description=description,
        created_at=now,
        created_by=created_by,
        modified_at=now,
        done=True,
        metadata={"type": metadata_type, "value": metadata},
        response={"type": response_type, "value": response or {}},
        error=None,
    )
