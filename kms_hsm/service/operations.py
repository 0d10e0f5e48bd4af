"""Building finished Operations the way Yandex KMS returns them (done at once)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from kms_hsm.audit.chain import AuditEvent
from kms_hsm.audit.store import AuditLog
from kms_hsm.domain.ids import OPERATION_PREFIX, new_id
from kms_hsm.service.context import CallContext
from kms_hsm.store import repository
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


def persist_with_audit(
    session: Session,
    operation: StoredOperation,
    audit: AuditLog | None,
    caller: CallContext,
    version_id: str = "",
) -> StoredOperation:
    """Store a finished Operation and, in the same transaction, its audit event."""
    repository.add_operation(session, operation)
    if audit is not None:
        audit.append(
            session,
            AuditEvent(
                time=operation.created_at,
                principal_id=caller.principal_id,
                method=caller.method,
                key_id=operation.key_id or "",
                version_id=version_id,
                outcome="OK",
                request_id=caller.request_id,
                source=caller.source,
                transport=caller.transport,
            ),
        )
    return operation
