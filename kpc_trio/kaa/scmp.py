"""17/SCMP configuration update events: subjects and the two generations of both records.

Tekton announces that configuration changed; the event names only the scope (tenant,
application, appversion), never the content, which the consumer re-fetches over REST. Consumers
never acknowledge (RFC 17), so there is no encoder for a reply here.

Generations (kaa-rfcs 0d305b9, Oct 2019, and 091055a, June 2020): v1 on the
`...app-configuration.<type>` subjects without a tenant; v2 on `...configuration.<type>` with
`tenantID` inserted in the middle. Plain Avro datums carry no schema, so a payload is decoded as
v2 and then v1, and a generation fits only if it consumes every byte: a v2 reader runs out of
v1 bytes, and a v1 reader given v2 bytes leaves some unread.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Final

import attrs
import fastavro

UPDATE_TYPES: Final = ("upsert", "delete")

_STRING: Final = "string"
_OPTIONAL: Final = ["null", "string"]


def _record(name: str, fields: list[tuple[str, Any]]) -> Any:
    return fastavro.parse_schema({
        "type": "record",
        "name": name,
        "namespace": "org.kaaproject.scmp.event.gen.v1.service.configuration",
        "fields": [
            {"name": field, "type": kind, **({"default": None} if kind == _OPTIONAL else {})}
            for field, kind in fields
        ],
    }, {})


# RFC 17, 0017-broadcast_configuration_update.avsc and 0017-service_specific_...avsc.
_BROADCAST_V2: Final = _record("BroadcastConfigurationUpdateEvent", [
    ("correlationId", _STRING), ("timestamp", "long"), ("originatorReplicaId", _STRING),
    ("tenantID", _OPTIONAL), ("appName", _OPTIONAL), ("appVerName", _OPTIONAL)])
_BROADCAST_V1: Final = _record("BroadcastConfigurationUpdateEvent", [
    ("correlationId", _STRING), ("timestamp", "long"), ("originatorReplicaId", _STRING),
    ("appName", _OPTIONAL), ("appVerName", _OPTIONAL)])
_TARGETED_V2: Final = _record("ServiceSpecificConfigurationUpdateEvent", [
    ("correlationId", _STRING), ("timestamp", "long"), ("tenantID", _STRING),
    ("appName", _OPTIONAL), ("appVerName", _OPTIONAL)])
_TARGETED_V1: Final = _record("ServiceSpecificConfigurationUpdateEvent", [
    ("correlationId", _STRING), ("timestamp", "long"), ("appName", _STRING),
    ("appVerName", _OPTIONAL)])

_SCHEMAS: Final = {
    "broadcast": ((2, _BROADCAST_V2), (1, _BROADCAST_V1)),
    "targeted": ((2, _TARGETED_V2), (1, _TARGETED_V1)),
}


class ScmpDecodeError(ValueError):
    """A payload that is neither generation of the expected record."""


@attrs.frozen
class ConfigurationUpdate:
    """One 17/SCMP event: which scope changed. All of tenant, app and appversion None means
    "everything"."""

    update_type: str  # upsert | delete: a hint only, the re-fetch decides
    correlation_id: str
    tenant_id: str | None
    app_name: str | None
    app_version: str | None
    generation: int  # 1 or 2 (which schema fitted)
    delivery: str  # broadcast | targeted


def subjects(provider: str, instance: str, *, legacy: bool) -> tuple[str, ...]:
    """Subjects to subscribe to (wildcard on the update type), broadcast first. No queue group:
    every replica must hear every event."""
    generations = (False, True) if legacy else (False,)
    return tuple(
        subject
        for old in generations
        for subject in (broadcast_subject(provider, "*", legacy=old),
                        targeted_subject(instance, "*", legacy=old))
    )


def broadcast_subject(provider: str, update_type: str, *, legacy: bool = False) -> str:
    name = "app-configuration" if legacy else "configuration"
    return f"kaa.v1.events.{provider}.service.{name}.{update_type}"


def targeted_subject(instance: str, update_type: str, *, legacy: bool = False) -> str:
    name = "app-configuration" if legacy else "configuration"
    return f"kaa.v1.service.{instance}.scmp.{name}.{update_type}"


def decode(subject: str, payload: bytes) -> ConfigurationUpdate:
    """The event on `subject` (one of `subjects()`); raises ScmpDecodeError."""
    update_type = subject.rsplit(".", 1)[-1]
    if update_type not in UPDATE_TYPES:
        raise ScmpDecodeError(f"unknown update type {update_type!r} (expected upsert or delete)")
    delivery = "broadcast" if subject.startswith("kaa.v1.events.") else "targeted"
    for generation, schema in _SCHEMAS[delivery]:
        datum = _read_whole(schema, payload)
        if datum is not None:
            return ConfigurationUpdate(
                update_type=update_type,
                correlation_id=datum["correlationId"],
                tenant_id=datum.get("tenantID"),
                app_name=datum.get("appName"),
                app_version=datum.get("appVerName"),
                generation=generation,
                delivery=delivery,
            )
    raise ScmpDecodeError(f"{len(payload)} bytes are no {delivery} configuration update "
                          "event of either schema generation")


def encode(update: ConfigurationUpdate, *, timestamp: int,
           originator_replica_id: str = "") -> bytes:
    """The event's bytes in its generation's schema (the simulated Tekton publishes these)."""
    datum = {
        "correlationId": update.correlation_id, "timestamp": timestamp,
        "originatorReplicaId": originator_replica_id, "tenantID": update.tenant_id,
        "appName": update.app_name, "appVerName": update.app_version,
    }
    schema = dict(_SCHEMAS[update.delivery])[update.generation]
    buffer = BytesIO()
    fastavro.schemaless_writer(buffer, schema, datum)
    return buffer.getvalue()


def _read_whole(schema: Any, payload: bytes) -> dict[str, Any] | None:
    stream = BytesIO(payload)
    try:
        datum = fastavro.schemaless_reader(stream, schema, None)
    except Exception:  # noqa: BLE001 - whatever error garbage makes the reader raise
        return None
    return datum if isinstance(datum, dict) and stream.tell() == len(payload) else None
