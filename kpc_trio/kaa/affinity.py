"""Session affinity towards extensions (RFC 3/4, 4/ESP), sans-IO.

An extension answering from one of its replicas names that replica in the NATS `replyTo` of its
ExtensionData (`kaa.v1.replica.<replica-id>.esp.<type>`). KPC remembers it per (endpoint,
extension) and sends that endpoint's following ClientData for that extension there
(`kaa.v1.replica.<replica-id>.esp.ClientData`, the last token substituted as RFC 3 says),
instead of the service-wide subject, until the entry expires (`kaa.kpc.esp.affinity-ttl`), or is
forgotten because the replica looks unreachable: NATS refused a message to it, or it has been
sent messages for the endpoint and not answered any for `unanswered_limit` (the ESP response
timeout; core NATS drops a message nobody subscribes to without a word). Falling back is always
safe: any replica of the service takes the service subject. Bounded in bytes (least recently
used go first): endpoints and extensions are many, and the subject comes from the far side.
"""

from __future__ import annotations

import collections
import types

_PREFIX = "kaa.v1.replica."
_ESP_CLIENT_DATA = ".esp.ClientData"
#: Bookkeeping per entry besides its strings (key tuple, value tuple, dict slot), roughly.
ENTRY_OVERHEAD = 200


def client_data_subject(reply_to: str) -> str | None:
    """The ClientData subject of the extension replica that `reply_to` names, or None when it
    is no replica subject of 4/ESP (`kaa.v1.replica.<id>.esp.<type>`)."""
    if not reply_to.startswith(_PREFIX):
        return None
    parts = reply_to.split(".")
    if len(parts) != 6 or parts[4] != "esp" or not parts[3] or not parts[5] \
            or any(c in reply_to for c in " \t\r\n*>"):
        return None
    return f"{_PREFIX}{parts[3]}{_ESP_CLIENT_DATA}"


class _Entry:
    __slots__ = ("subject", "expires_at", "unanswered_since")

    def __init__(self, subject: str, expires_at: float) -> None:
        self.subject = subject
        self.expires_at = expires_at
        self.unanswered_since: float | None = None  # first message sent since the last answer


class Affinity:
    def __init__(self, *, ttl: float, max_bytes: int, unanswered_limit: float = 30.0) -> None:
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._unanswered_limit = unanswered_limit
        self._bytes = 0
        # (endpoint id, extension) -> entry, least recently used first
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = (
            collections.OrderedDict())
        #: Read-only view of the entries: its truth value is a C-level length check, where
        #: `len(affinity)` is a Python call (the relay asks once per message).
        self.entries = types.MappingProxyType(self._entries)

    @property
    def enabled(self) -> bool:
        return self._ttl > 0 and self._max_bytes > 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, endpoint_id: str, extension: str, reply_to: str, now: float) -> None:
        """An ExtensionData for the endpoint came with `reply_to` (ignored unless it is a
        replica subject)."""
        if not self.enabled:
            return
        subject = client_data_subject(reply_to)
        if subject is None:
            return
        key = (endpoint_id, extension)
        entry = self._entries.get(key)
        if entry is not None and entry.subject == subject:
            # The same replica again (the usual answer): renewed in place, its strings and so
            # its bytes unchanged.
            entry.expires_at = now + self._ttl
            entry.unanswered_since = None
            self._entries.move_to_end(key)
            return
        self._drop(key)
        self._entries[key] = _Entry(subject, now + self._ttl)
        self._bytes += _size(key, subject)
        while self._bytes > self._max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def subject_for(self, endpoint_id: str, extension: str, now: float) -> str | None:
        """The replica subject to send the endpoint's ClientData for `extension` to now, or None
        (unknown, expired or unanswered: the service subject)."""
        key = (endpoint_id, extension)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.unanswered_since is None:
            entry.unanswered_since = now
        elif now - entry.unanswered_since >= self._unanswered_limit:
            self._drop(key)
            return None
        if entry.expires_at <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.subject

    def forget_subject(self, subject: str) -> int:
        """NATS refused a message to this replica subject: every endpoint sent there goes to
        the service subject from now on. Returns how many were forgotten (rare: a scan)."""
        doomed = [key for key, entry in self._entries.items() if entry.subject == subject]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry.subject)


def _size(key: tuple[str, str], subject: str) -> int:
    return len(key[0]) + len(key[1]) + len(subject) + ENTRY_OVERHEAD
