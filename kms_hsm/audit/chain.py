"""The audit chain itself: the event, its canonical JSON, the hash link and verification.

Pure: values and functions only, no database, no event loop, no I/O. The store
(``audit/store.py``) keeps the chain in the database; the batcher (``audit/batcher.py``)
commits it in groups. Both call into this module for every event.

What the chain guarantees. Events are numbered from 1 (``seq``) and linked:

    hash(n) = SHA-256(hash(n - 1) || canonical JSON of (seq n, event n))

as lowercase hex, with ``hash(0)`` = ``GENESIS`` (64 zeros). The canonical JSON is the
event's fields and ``seq`` with sorted keys and no spaces, ASCII only, the time as
``isoformat()``; it is fixed byte for byte (a test holds a hash vector), so an auditor
can recompute every hash from an export with any JSON library and SHA-256. Hence:

- changing any field of a stored event changes its hash, which no longer matches;
- removing or reordering events breaks a ``prev_hash`` link or the ``seq`` numbering;
- removing events from the end is caught only against the stored end of the chain
  (``ChainHead``), which the store keeps in the same transaction as the events.

The chain proves integrity, not authorship: whoever can write the database can write a
whole new consistent chain. An export kept elsewhere (or the JSON-lines stream) pins it.
Events record who, what, which key and version, the outcome, the request id and the
source address; never plaintext, data keys, aadContext contents or tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

GENESIS = "0" * 64
"""The ``prev_hash`` of the first event."""


class AuditEvent(NamedTuple):
    """What one request did; every field is safe to store and to show an auditor.

    (A NamedTuple, not a frozen dataclass: one is built per request, and a frozen
    dataclass's ``__init__`` costs several times a tuple's.)
    """

    time: datetime
    principal_id: str
    method: str
    key_id: str
    version_id: str
    outcome: str
    request_id: str
    source: str


class ChainedEvent(NamedTuple):
    """An event with its place in the chain (a NamedTuple: one is built per request)."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str

    def to_json(self) -> str:
        """One JSON line (the export and stream format)."""
        body = {**self.event._asdict(), "time": self.event.time.isoformat()}
        return json.dumps(
            {"seq": self.seq, **body, "prevHash": self.prev_hash, "hash": self.hash},
            sort_keys=True,
        )


class ChainHead(NamedTuple):
    """The end of a chain: the last ``seq`` and its hash (``0, GENESIS`` when empty)."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of walking the chain."""

    ok: bool
    events: int
    first_broken_seq: int | None = None
    reason: str = ""


_quote = json.encoder.encode_basestring_ascii  # what json.dumps uses for str


def canonical_event(seq: int, event: AuditEvent, iso: str | None = None) -> str:
    """``json.dumps`` of the event and ``seq`` with sorted keys and no spaces, built directly.

    Byte for byte what ``json.dumps({..}, sort_keys=True, separators=(",", ":"))`` gives
    (a test holds the two together); writing it out skips the generic encoder, which
    showed in the encrypt profile. ``iso``: ``event.time.isoformat()``, if at hand.
    """
    if iso is None:
        iso = event.time.isoformat()
    return (
        f'{{"key_id":{_quote(event.key_id)},"method":{_quote(event.method)},'
        f'"outcome":{_quote(event.outcome)},"principal_id":{_quote(event.principal_id)},'
        f'"request_id":{_quote(event.request_id)},"seq":{seq},'
        f'"source":{_quote(event.source)},"time":{_quote(iso)},'
        f'"version_id":{_quote(event.version_id)}}}'
    )


def event_hash(prev_hash: str, seq: int, event: AuditEvent, iso: str | None = None) -> str:
    """SHA-256 over the previous hash and the canonical JSON of (seq, event)."""
    canonical = canonical_event(seq, event, iso)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def verify_links(chain: Iterable[ChainedEvent]) -> tuple[Verification, ChainHead]:
    """Walk ``chain`` from its first event; the verdict and where the intact part ends.

    Checks that ``seq`` runs 1, 2, 3, ... without a gap, that each ``prev_hash`` is the
    hash before it (``GENESIS`` first) and that each hash is the event's own. Stops at
    the first broken event. The returned head is the last intact event, to hold against
    the stored end of the chain with ``verify_head``.
    """
    end = ChainHead(0, GENESIS)
    count = 0
    for chained in chain:
        count += 1
        seq = end.seq + 1
        if chained.seq != seq:
            reason = f"event {seq} is missing"
        elif chained.prev_hash != end.hash:
            reason = "previous-hash link does not match"
        elif event_hash(chained.prev_hash, chained.seq, chained.event) != chained.hash:
            reason = "content does not match its hash"
        else:
            end = ChainHead(seq, chained.hash)
            continue
        return Verification(False, count, seq, reason), end
    return Verification(True, count), end


def verify_head(walked: Verification, end: ChainHead, stored: ChainHead | None) -> Verification:
    """``walked`` (from ``verify_links``), failed if events were cut off the end.

    ``end``: where the walk ended; ``stored``: the end of the chain as the store
    recorded it with the last append (None where the store keeps none). A chain whose
    events all link but stop short of the stored end lost its last events.
    """
    if walked.ok and stored is not None and stored != end:
        return Verification(
            False, walked.events, end.seq + 1, "events after this one were removed from the end"
        )
    return walked
