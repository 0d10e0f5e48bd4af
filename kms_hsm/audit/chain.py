"""The audit chain itself: the event, its canonical JSON, the links, checkpoints, verification.

Pure: values and functions only, no database, no event loop, no I/O. The store
(``audit/store.py``) keeps the chain in the database; the batcher (``audit/batcher.py``)
commits it in groups; ``audit/checkpoints.py`` pins its head in the token and the log file.

Events are numbered from 1 (``seq``) and linked. Two forms of link exist:

* v1 (events written before chain v2; still verified as written):
  ``hash(n) = SHA-256(hash(n - 1) || canonical_v1(seq n, event n))``, lowercase hex.
* v2 (every event written since): ``hash(n) = HMAC-SHA-256(K, hash(n - 1) ||
  canonical_v2(seq n, event n))``, lowercase hex. ``K`` is the chain key: 32 random bytes
  kept in the database only wrapped (AES-GCM) by the HSM root key, which never leaves the
  token; each process unwraps it once at start, so an append costs one host HMAC and no
  HSM call.

``hash(0)`` = ``GENESIS`` (64 zeros); the first v2 event links to the last v1 hash, so the
v2 part pins the v1 part before it. Once an event is v2 every later one must be v2. The
canonical JSON is the event's fields and ``seq`` (v2 also ``"v":2``) with sorted keys and
no spaces, ASCII only, the time as ``isoformat()``; both forms are pinned by test vectors.

What it guarantees, against someone who can write the database but cannot use the token
(no PIN): editing, inserting or reordering any event, or deleting one in the middle, breaks
a MAC they cannot recompute. Cutting events off the end (with ``audit_head`` moved back)
and restoring an older copy of the whole database are caught against a checkpoint of the
head (``Checkpoint``: seq and MAC, itself MAC'd): one in the token, and the ones in the
JSON-lines file when ``audit verify --checkpoints`` is given it. The window: events
committed after the newest checkpoint (at most ``KMS_HSM_AUDIT_CHECKPOINT_INTERVAL``
seconds of them, plus what a crashed process never checkpointed) can be cut unnoticed;
they still cannot be altered. Whoever holds the PIN can recompute everything: the chain
proves integrity against the database's writers, not against the token's owner.

Events record who, what, which key and version, the outcome, the request id and the
source address; never plaintext, data keys, aadContext contents or tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

GENESIS = "0" * 64
"""The ``prev_hash`` of the first event."""

CHAIN_V1 = 1
CHAIN_V2 = 2
CHAIN_KEY_NAME = "audit-chain-v2"
"""The service secret (``Keyring.service_secret``) that is the v2 chain key."""

_CHECKPOINT_DOMAIN = b"kms-hsm audit checkpoint v2\n"


class ChainKey:
    """The v2 chain key, ready to MAC: HMAC-SHA-256 with its keyed state made once.

    ``hmac.new`` per event costs three times a SHA-256 link (measured 5.4 against 1.6 µs);
    copying a keyed object costs 2.4 µs. The secret is never part of ``repr``.
    """

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def mac(self, message: bytes) -> str:
        """HMAC-SHA-256 of ``message`` under the key, lowercase hex."""
        keyed = self._keyed.copy()
        keyed.update(message)
        return keyed.hexdigest()

    def __repr__(self) -> str:
        return "ChainKey(<secret>)"


class AuditEvent(NamedTuple):
    """What one request did; every field is safe to store and to show an auditor.

    (A NamedTuple, not a frozen dataclass: one is built per request, and a frozen
    dataclass's ``__init__`` costs several times a tuple's.) ``client_request_id``: a
    request id the client sent that was not taken as ours (carried, MAC'd in v2 only).
    ``transport``: MAC'd in v2 when not empty (events from before it verify unchanged).
    """

    time: datetime
    principal_id: str
    method: str
    key_id: str
    version_id: str
    outcome: str
    request_id: str
    source: str
    client_request_id: str = ""
    # "rest" or "grpc": which API the request came by; "" for the CLI and the scheduler.
    transport: str = ""


class ChainedEvent(NamedTuple):
    """An event with its place in the chain (a NamedTuple: one is built per request)."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str
    chain: int = CHAIN_V1

    def to_json(self) -> str:
        """One JSON line (the export and stream format)."""
        body = {**self.event._asdict(), "time": self.event.time.isoformat()}
        return json.dumps(
            {
                "seq": self.seq,
                **body,
                "prevHash": self.prev_hash,
                "hash": self.hash,
                "chain": self.chain,
            },
            sort_keys=True,
        )


class ChainHead(NamedTuple):
    """The end of a chain: the last ``seq`` and its hash (``0, GENESIS`` when empty)."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Verification:
    """Result of walking the chain; ``mac_from``: the first v2 (MAC'd) event, if any."""

    ok: bool
    events: int
    first_broken_seq: int | None = None
    reason: str = ""
    mac_from: int | None = None
    notes: tuple[str, ...] = ()


_quote = json.encoder.encode_basestring_ascii  # what json.dumps uses for str


def canonical_event(seq: int, event: AuditEvent, iso: str | None = None) -> str:
    """v1: ``json.dumps`` of the event (without ``client_request_id``) and ``seq``.

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


def canonical_event_v2(seq: int, event: AuditEvent, iso: str | None = None) -> str:
    """v2: every field of the event, ``seq`` and ``"v":2``, sorted keys, no spaces.

    ``transport`` is left out when empty: it came after the first v2 events, whose MACs
    cover the form without it.
    """
    if iso is None:
        iso = event.time.isoformat()
    transport = f'"transport":{_quote(event.transport)},' if event.transport else ""
    return (
        f'{{"client_request_id":{_quote(event.client_request_id)},'
        f'"key_id":{_quote(event.key_id)},"method":{_quote(event.method)},'
        f'"outcome":{_quote(event.outcome)},"principal_id":{_quote(event.principal_id)},'
        f'"request_id":{_quote(event.request_id)},"seq":{seq},'
        f'"source":{_quote(event.source)},"time":{_quote(iso)},{transport}"v":2,'
        f'"version_id":{_quote(event.version_id)}}}'
    )


def event_hash(prev_hash: str, seq: int, event: AuditEvent, iso: str | None = None) -> str:
    """v1 link: SHA-256 over the previous hash and the canonical JSON of (seq, event)."""
    canonical = canonical_event(seq, event, iso)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def event_mac(
    key: ChainKey, prev_hash: str, seq: int, event: AuditEvent, iso: str | None = None
) -> str:
    """v2 link: HMAC-SHA-256 under the chain key over the previous hash and canonical v2."""
    return key.mac((prev_hash + canonical_event_v2(seq, event, iso)).encode())


class Checkpoint(NamedTuple):
    """The head of the chain at some time, MAC'd under the chain key (token and log file)."""

    seq: int
    hash: str
    time: str
    mac: str

    @staticmethod
    def canonical(seq: int, head_hash: str, time: str) -> str:
        """What the checkpoint's MAC covers (after a domain label)."""
        return (
            f'{{"hash":{_quote(head_hash)},"seq":{seq},"time":{_quote(time)},"type":"checkpoint"}}'
        )

    @classmethod
    def make(cls, key: ChainKey, head: ChainHead, time: datetime) -> Checkpoint:
        """A checkpoint of ``head`` signed with ``key``."""
        iso = time.isoformat()
        body = cls.canonical(head.seq, head.hash, iso).encode()
        return cls(head.seq, head.hash, iso, key.mac(_CHECKPOINT_DOMAIN + body))

    def valid(self, key: ChainKey) -> bool:
        """True when the MAC is the chain key's (constant-time compare)."""
        body = self.canonical(self.seq, self.hash, self.time).encode()
        return hmac.compare_digest(key.mac(_CHECKPOINT_DOMAIN + body), self.mac)

    def to_json(self) -> str:
        """One JSON line; ``"type":"checkpoint"`` tells it from the event lines."""
        return json.dumps(
            {
                "type": "checkpoint",
                "seq": self.seq,
                "hash": self.hash,
                "time": self.time,
                "mac": self.mac,
            },
            sort_keys=True,
        )

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Checkpoint:
        """From a parsed JSON line; ValueError when it is not a well-formed checkpoint."""
        try:
            seq, head_hash, time, mac = data["seq"], data["hash"], data["time"], data["mac"]
        except (KeyError, TypeError):
            raise ValueError("not a checkpoint") from None
        if not (isinstance(seq, int) and all(isinstance(v, str) for v in (head_hash, time, mac))):
            raise ValueError("not a checkpoint")
        return cls(seq, head_hash, time, mac)


def verify_links(
    chain: Iterable[ChainedEvent], key: ChainKey | None = None
) -> tuple[Verification, ChainHead]:
    """Walk ``chain`` from its first event; the verdict and where the intact part ends.

    Checks that ``seq`` runs 1, 2, 3, ... without a gap, that each ``prev_hash`` is the
    link before it (``GENESIS`` first), that each link is the event's own (SHA-256 for v1,
    the MAC under ``key`` for v2) and that no v1 event follows a v2 one (a downgrade).
    Stops at the first broken event. The returned head is the last intact event.
    """
    end = ChainHead(0, GENESIS)
    count = 0
    mac_from: int | None = None
    for chained in chain:
        count += 1
        seq = end.seq + 1
        if chained.seq != seq:
            reason = f"event {seq} is missing"
        elif chained.prev_hash != end.hash:
            reason = "previous-hash link does not match"
        elif chained.chain == CHAIN_V2:
            if key is None:
                reason = "MAC'd event, but the chain key (the token) is not available"
            elif not hmac.compare_digest(
                event_mac(key, chained.prev_hash, chained.seq, chained.event), chained.hash
            ):
                reason = "content does not match its MAC"
            else:
                mac_from = mac_from or seq
                end = ChainHead(seq, chained.hash)
                continue
        elif mac_from is not None or chained.chain != CHAIN_V1:
            reason = "unkeyed (v1) event after the MAC'd part began"
        elif event_hash(chained.prev_hash, chained.seq, chained.event) != chained.hash:
            reason = "content does not match its hash"
        else:
            end = ChainHead(seq, chained.hash)
            continue
        return Verification(False, count, seq, reason, mac_from), end
    return Verification(True, count, mac_from=mac_from), end


def verify_head(walked: Verification, end: ChainHead, stored: ChainHead | None) -> Verification:
    """``walked`` (from ``verify_links``), failed if events were cut off the end.

    ``end``: where the walk ended; ``stored``: the end of the chain as the store
    recorded it with the last append (None where the store keeps none). A chain whose
    events all link but stop short of the stored end lost its last events.
    """
    if walked.ok and stored is not None and stored != end:
        return _broken(walked, end.seq + 1, "events after this one were removed from the end")
    return walked


def verify_checkpoints(
    walked: Verification,
    links: dict[int, str],
    end: ChainHead,
    checkpoints: Iterable[tuple[str, Checkpoint]],
    key: ChainKey | None,
) -> Verification:
    """``walked``, failed unless the chain holds every checkpoint's head.

    ``links``: each verified event's hash by seq; ``checkpoints``: (where it was found,
    checkpoint). A checkpoint beyond the end means events were cut off the end or an
    older database was restored; one whose hash differs means the chain was rewritten.
    A checkpoint whose own MAC is wrong is forged (or from another deployment).
    """
    if not walked.ok:
        return walked
    newest: tuple[str, Checkpoint] | None = None
    for origin, checkpoint in checkpoints:
        if key is None:
            return _broken(walked, None, f"cannot check the checkpoint in {origin}: no chain key")
        if not checkpoint.valid(key):
            return _broken(walked, None, f"checkpoint in {origin} has a wrong MAC (forged)")
        if checkpoint.seq > end.seq:
            return _broken(
                walked,
                end.seq + 1,
                f"the chain ends at event {end.seq} but the checkpoint in {origin} "
                f"(at {checkpoint.time}) has event {checkpoint.seq}: events were cut off "
                "the end or an older database was restored",
            )
        if checkpoint.seq > 0 and links.get(checkpoint.seq) != checkpoint.hash:
            return _broken(
                walked,
                checkpoint.seq,
                f"event {checkpoint.seq} differs from the checkpoint in {origin}",
            )
        if newest is None or checkpoint.seq > newest[1].seq:
            newest = (origin, checkpoint)
    if newest is None:
        return walked
    origin, checkpoint = newest
    note = f"newest checkpoint: event {checkpoint.seq} at {checkpoint.time} ({origin})"
    return Verification(True, walked.events, None, "", walked.mac_from, (*walked.notes, note))


def _broken(walked: Verification, seq: int | None, reason: str) -> Verification:
    return Verification(False, walked.events, seq, reason, walked.mac_from, walked.notes)
