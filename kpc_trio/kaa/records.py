"""Avro records exchanged over NATS (4/ESP, 9/ELCE, 16/ECAP, 22/CAP).

Each record is a frozen attrs class whose snake_case attributes mirror the camelCase Avro fields of
its schema in `schemas/`, in schema order (checked at import, so a schema edit cannot silently
drift from its class). On the wire a record is a plain Avro binary datum: no container header and
no schema fingerprint, as every Kaa service expects (spec 4.7).
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.resources import files
from io import BytesIO
from typing import Any, TypeAlias, TypeVar, cast

import attrs
import fastavro


class RecordEncodeError(ValueError):
    """A record holds a value its Avro schema cannot carry (e.g. a request id above 2**31-1)."""


class RecordDecodeError(ValueError):
    """Bytes received over NATS are not a datum of the expected Avro record."""


# ---- 4/ESP ---------------------------------------------------------------------------------------


@attrs.frozen
class ClientData:
    correlation_id: str
    timestamp: int
    timeout: int
    app_version_name: str
    endpoint_id: str | None
    resource_path: str
    request_id: int | None
    payload: bytes
    config_name: str | None = None


@attrs.frozen
class ExtensionData:
    correlation_id: str
    timestamp: int
    timeout: int
    app_version_name: str | None
    extension_instance_name: str | None
    endpoint_id: str | None
    resource_path: str
    request_id: int | None
    payload: bytes | None
    status_code: int
    reason_phrase: str | None = None


# ---- 9/ELCE --------------------------------------------------------------------------------------


@attrs.frozen
class ConnectedEvent:
    correlation_id: str
    timestamp: int
    timeout: int
    endpoints: dict[str, str]  # endpoint id -> appversion name
    originator_replica_id: str


@attrs.frozen
class DisconnectedEvent:
    correlation_id: str
    timestamp: int
    timeout: int
    endpoints: dict[str, str]  # endpoint id -> appversion name
    originator_replica_id: str


@attrs.frozen
class TrafficStat:
    total_received_payload: int = 0
    total_sent_payload: int = 0
    total_received_message_count: int = 0
    total_sent_message_count: int = 0


TenantTrafficStats: TypeAlias = dict[str, dict[str, dict[str, TrafficStat]]]


@attrs.frozen
class TrafficReportEvent:
    tenant_traffic_stats: TenantTrafficStats  # tenant id -> app name -> endpoint id -> stat
    time_from: int  # nanoseconds
    time_to: int  # nanoseconds
    correlation_id: str
    originator_replica_id: str
    timestamp: int
    timeout: int


# ---- 16/ECAP -------------------------------------------------------------------------------------


@attrs.frozen
class EndpointTokenValidationRequest:
    correlation_id: str
    timestamp: int
    timeout: int
    app_name: str
    token: str


@attrs.frozen
class EndpointTokenValidationResponse:
    correlation_id: str
    timestamp: int
    timeout: int
    token_id: str | None
    endpoint_id: str | None
    status_code: int
    reason_phrase: str | None = None


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class EndpointTokenRevokedEvent:
    correlation_id: str
    timestamp: int
    timeout: int
    app_name: str
    endpoint_id: str
    token_ids: tuple[str, ...] = attrs.field(converter=_str_tuple)
    originator_replica_id: str


@attrs.frozen
class ClientUsernamePasswordValidationRequest:
    correlation_id: str
    timestamp: int
    timeout: int
    username: str | None
    password: str | None


@attrs.frozen
class ClientUsernamePasswordValidationResponse:
    correlation_id: str
    timestamp: int
    timeout: int
    credential_id: str | None
    client_id: str | None
    status_code: int
    reason_phrase: str | None = None


@attrs.frozen
class ClientCertificateValidationRequest:
    correlation_id: str
    timestamp: int
    timeout: int
    issuer: str
    serial_number: str  # base 10


@attrs.frozen
class ClientCertificateValidationResponse:
    correlation_id: str
    timestamp: int
    timeout: int
    credential_id: str | None
    client_id: str | None
    status_code: int
    reason_phrase: str | None = None


@attrs.frozen
class ClientCredentialRevokedEvent:
    correlation_id: str
    timestamp: int
    timeout: int
    credential_id: str
    originator_replica_id: str


# ---- 22/CAP --------------------------------------------------------------------------------------


@attrs.frozen
class ClientBasicAuthenticationRequest:
    correlation_id: str
    timestamp: int
    timeout: int
    tenant_id: str
    username: str
    password: str


@attrs.frozen
class ClientBasicAuthenticationResponse:
    correlation_id: str
    timestamp: int
    timeout: int
    credentials_id: str | None
    client_id: str | None
    status_code: int
    reason_phrase: str | None = None


@attrs.frozen
class ClientCertificateAuthenticationRequest:
    correlation_id: str
    timestamp: int
    timeout: int
    issuer: str
    serial_number: str  # base 10


@attrs.frozen
class ClientCertificateAuthenticationResponse:
    correlation_id: str
    timestamp: int
    timeout: int
    tenant_id: str | None
    credentials_id: str | None
    client_id: str | None
    status_code: int
    reason_phrase: str | None = None


@attrs.frozen
class ClientCredentialsRevokedEvent:
    correlation_id: str
    timestamp: int
    timeout: int
    tenant_id: str
    credentials_id: str
    originator_replica_id: str


Record: TypeAlias = (
    ClientData
    | ExtensionData
    | ConnectedEvent
    | DisconnectedEvent
    | TrafficReportEvent
    | EndpointTokenValidationRequest
    | EndpointTokenValidationResponse
    | EndpointTokenRevokedEvent
    | ClientUsernamePasswordValidationRequest
    | ClientUsernamePasswordValidationResponse
    | ClientCertificateValidationRequest
    | ClientCertificateValidationResponse
    | ClientCredentialRevokedEvent
    | ClientBasicAuthenticationRequest
    | ClientBasicAuthenticationResponse
    | ClientCertificateAuthenticationRequest
    | ClientCertificateAuthenticationResponse
    | ClientCredentialsRevokedEvent
)
R = TypeVar("R", bound=Record)


# ---- codec ---------------------------------------------------------------------------------------

_Datum: TypeAlias = dict[str, Any]
_Adapter: TypeAlias = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (to Avro, from Avro)


@attrs.frozen
class _Codec:
    record_type: type
    schema: Any  # fastavro parsed schema
    to_datum: Callable[[Any], _Datum]
    from_datum: Callable[[_Datum], Any]


def _snake_case(avro_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", avro_name).lower()


def _load_schema(file_name: str) -> dict[str, Any]:
    text = files(__package__).joinpath("schemas", file_name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _make_codec(
    record_type: type,
    schema: dict[str, Any],
    adapters: Mapping[str, _Adapter],
    to_datum: Callable[[Any], _Datum] | None = None,
) -> _Codec:
    avro_names = tuple(field["name"] for field in schema["fields"])
    attribute_names = tuple(a.name for a in attrs.fields(record_type))
    if attribute_names != tuple(_snake_case(name) for name in avro_names):
        raise TypeError(
            f"{record_type.__name__} attributes {attribute_names} do not mirror the fields of "
            f"Avro schema {schema['name']} {avro_names}; update the class to match the schema"
        )
    # attrgetter over several names returns a tuple: the cheapest generic read of a record
    read_attributes = operator.attrgetter(*attribute_names)

    def generic_to_datum(record: Any) -> _Datum:
        datum = dict(zip(avro_names, read_attributes(record), strict=True))
        for name, (to_avro, _) in adapters.items():
            datum[name] = to_avro(datum[name])
        return datum

    def from_datum(datum: _Datum) -> Any:
        for name, (_, from_avro) in adapters.items():
            datum[name] = from_avro(datum[name])
        return record_type(*(datum[name] for name in avro_names))

    return _Codec(
        record_type=record_type,
        schema=fastavro.parse_schema(schema, {}),
        to_datum=to_datum or generic_to_datum,
        from_datum=from_datum,
    )


def _client_data_to_datum(cd: ClientData) -> _Datum:
    # Hot path (one call per client PUBLISH): a dict literal is ~3x faster than the generic read.
    return {
        "correlationId": cd.correlation_id,
        "timestamp": cd.timestamp,
        "timeout": cd.timeout,
        "appVersionName": cd.app_version_name,
        "endpointId": cd.endpoint_id,
        "resourcePath": cd.resource_path,
        "requestId": cd.request_id,
        "payload": cd.payload,
        "configName": cd.config_name,
    }


def _traffic_stats_to_avro(stats: TenantTrafficStats) -> Any:
    return {
        tenant: {
            app: {
                endpoint: dict(zip(_TRAFFIC_STAT_AVRO, attrs.astuple(stat), strict=True))
                for endpoint, stat in endpoints.items()
            }
            for app, endpoints in apps.items()
        }
        for tenant, apps in stats.items()
    }


def _traffic_stats_from_avro(stats: Any) -> TenantTrafficStats:
    return {
        tenant: {
            app: {
                endpoint: TrafficStat(*(stat[name] for name in _TRAFFIC_STAT_AVRO))
                for endpoint, stat in endpoints.items()
            }
            for app, endpoints in apps.items()
        }
        for tenant, apps in stats.items()
    }


_SCHEMA_FILES: dict[type, str] = {
    ClientData: "0004-client-data.avsc",
    ExtensionData: "0004-extension-data.avsc",
    ConnectedEvent: "0009-ep-connected.avsc",
    DisconnectedEvent: "0009-ep-disconnected.avsc",
    TrafficReportEvent: "0009-ep-traffic-stats.avsc",
    EndpointTokenValidationRequest: "0016-endpoint-token-validation-request.avsc",
    EndpointTokenValidationResponse: "0016-endpoint-token-validation-response.avsc",
    EndpointTokenRevokedEvent: "0016-endpoint-token-revoked.avsc",
    ClientUsernamePasswordValidationRequest: (
        "0016-client-username-password-validation-request.avsc"
    ),
    ClientUsernamePasswordValidationResponse: (
        "0016-client-username-password-validation-response.avsc"
    ),
    ClientCertificateValidationRequest: "0016-client-certificate-validation-request.avsc",
    ClientCertificateValidationResponse: "0016-client-certificate-validation-response.avsc",
    ClientCredentialRevokedEvent: "0016-client-credential-revoked.avsc",
    ClientBasicAuthenticationRequest: "0022-basic-authentication-request.avsc",
    ClientBasicAuthenticationResponse: "0022-basic-authentication-response.avsc",
    ClientCertificateAuthenticationRequest: "0022-certificate-authentication-request.avsc",
    ClientCertificateAuthenticationResponse: "0022-certificate-authentication-response.avsc",
    ClientCredentialsRevokedEvent: "0022-credentials-revoked.avsc",
}


def _traffic_stat_avro_names() -> tuple[str, ...]:
    """Avro field names of the `trafficStat` record nested three maps deep in the report."""
    report = _load_schema(_SCHEMA_FILES[TrafficReportEvent])
    stat = report["fields"][0]["type"]["values"]["values"]["values"]
    names = tuple(field["name"] for field in stat["fields"])
    attribute_names = tuple(a.name for a in attrs.fields(TrafficStat))
    if tuple(_snake_case(name) for name in names) != attribute_names:
        raise TypeError(f"TrafficStat attributes do not mirror Avro trafficStat fields {names}")
    return names


_TRAFFIC_STAT_AVRO = _traffic_stat_avro_names()
_ADAPTERS: dict[type, Mapping[str, _Adapter]] = {
    TrafficReportEvent: {
        "tenantTrafficStats": (_traffic_stats_to_avro, _traffic_stats_from_avro)
    },
}
_CODECS: dict[type, _Codec] = {
    record_type: _make_codec(
        record_type,
        _load_schema(file_name),
        _ADAPTERS.get(record_type, {}),
        _client_data_to_datum if record_type is ClientData else None,
    )
    for record_type, file_name in _SCHEMA_FILES.items()
}


def _legacy_client_data_schema() -> Any:
    """ClientData as written before `configName` was appended (Jan 2026); see spec 4.7."""
    schema = _load_schema(_SCHEMA_FILES[ClientData])
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "configName"]
    return fastavro.parse_schema(schema, {})


_LEGACY_CLIENT_DATA_SCHEMA = _legacy_client_data_schema()


def _write(schema: Any, datum: _Datum, record_name: str) -> bytes:
    buffer = BytesIO()
    try:
        fastavro.schemaless_writer(buffer, schema, datum)
    except (ValueError, TypeError, OverflowError) as exc:
        raise RecordEncodeError(f"cannot encode {record_name}: {exc}") from exc
    return buffer.getvalue()


def _read(schema: Any, data: bytes) -> _Datum:
    # Trailing bytes are tolerated on purpose: a writer whose schema appended an optional field
    # (as ClientData did with configName) still yields every field this reader knows.
    datum = fastavro.schemaless_reader(BytesIO(data), schema, None)
    return cast(_Datum, datum)


def encode(record: Record) -> bytes:
    """Encode `record` as a plain Avro binary datum; raises RecordEncodeError."""
    codec = _CODECS[type(record)]
    return _write(codec.schema, codec.to_datum(record), codec.record_type.__name__)


def encode_client_data(cd: ClientData, *, with_config_name: bool = True) -> bytes:
    """Encode `cd` with the current schema, or with the legacy one that has no `configName`
    (for extensions built before Jan 2026, spec 4.7)."""
    return write_client_data(
        cd.correlation_id, cd.timestamp, cd.timeout, cd.app_version_name, cd.endpoint_id,
        cd.resource_path, cd.request_id, cd.payload, cd.config_name,
        with_config_name=with_config_name,
    )


def write_client_data(
    correlation_id: str, timestamp: int, timeout: int, app_version_name: str,
    endpoint_id: str | None, resource_path: str, request_id: int | None, payload: bytes,
    config_name: str | None = None, *, with_config_name: bool = True,
) -> bytes:
    """The Avro datum of a `ClientData` with these fields, without building the record.

    A hand-written writer for this one record, about five times faster than fastavro's generic
    one and byte-identical to it (a property test compares both). The relay keeps the
    `ClientDataTemplate` of each route and fills only what changes per message.
    """
    template = client_data_template(timeout, app_version_name, endpoint_id, resource_path,
                                    request_id, config_name, with_config_name=with_config_name)
    return fill_client_data(template, correlation_id, timestamp, payload)


@attrs.frozen
class ClientDataTemplate:
    """The encoded fields of a `ClientData` that repeat message after message for one route and
    endpoint: `middle` is timeout to requestId, `tail` the configName (empty in the legacy
    layout). Only correlation id, timestamp and payload are left to encode per message."""

    middle: bytes
    tail: bytes


def client_data_template(
    timeout: int, app_version_name: str, endpoint_id: str | None, resource_path: str,
    request_id: int | None, config_name: str | None = None, *, with_config_name: bool = True,
) -> ClientDataTemplate:
    """Encode (and check) the repeating fields once; raises RecordEncodeError."""
    if not with_config_name and config_name is not None:
        raise RecordEncodeError(
            f"ClientData.config_name={config_name!r} cannot be carried by the legacy ClientData "
            "schema; enable the configName schema variant or leave config_name None"
        )
    if request_id is not None and not _INT_MIN <= request_id <= _INT_MAX:
        raise RecordEncodeError(f"cannot encode ClientData: requestId {request_id} is not an int")
    if with_config_name:
        tail = b"\x00" if config_name is None else b"\x02" + _avro_string(config_name)
    else:
        tail = b""
    try:
        middle = b"".join((
            _avro_long(timeout),
            _avro_string(app_version_name),
            # ["string","null"]: branch 0 is the string; ["int","null"] likewise
            b"\x02" if endpoint_id is None else b"\x00" + _avro_string(endpoint_id),
            _avro_string(resource_path),
            b"\x02" if request_id is None else b"\x00" + _avro_long(request_id),
        ))
    except (AttributeError, TypeError) as exc:
        raise RecordEncodeError(f"cannot encode ClientData: {exc}") from exc
    return ClientDataTemplate(middle, tail)


def fill_client_data(
    template: ClientDataTemplate, correlation_id: str, timestamp: int, payload: bytes
) -> bytes:
    """The `ClientData` datum of `template` with these per-message fields.

    The hot path of the relay (one call per client PUBLISH)."""
    try:
        correlation = correlation_id.encode()
        return b"".join((
            _avro_long(len(correlation)),
            correlation,
            _avro_timestamp(timestamp),
            template.middle,
            _avro_long(len(payload)),
            payload,
            template.tail,
        ))
    except (AttributeError, TypeError) as exc:
        raise RecordEncodeError(f"cannot encode ClientData: {exc}") from exc


def fill_client_data_run(
    template: ClientDataTemplate, correlation_prefix: bytes, first_id: int, timestamp: int,
    payloads: Sequence[bytes],
) -> list[bytes]:
    """`fill_client_data` for each of `payloads` (a run of one route's messages, one
    timestamp), the correlation ids `correlation_prefix` and `first_id`, `first_id + 1`, ...

    What repeats is encoded once per run: timestamp and template together, and a length while
    it stays the same (a correlation id's until the counter gains a digit; a payload's while a
    device keeps the size of its telemetry). A plain loop: short runs are common too."""
    fixed = _avro_timestamp(timestamp) + template.middle
    tail = template.tail
    datums: list[bytes] = []
    append = datums.append
    number = first_id
    correlation_length = size = -1
    correlation_length_bytes = size_bytes = b""
    for payload in payloads:
        correlation = b"%s%d" % (correlation_prefix, number)
        number += 1
        if len(correlation) != correlation_length:
            correlation_length = len(correlation)
            correlation_length_bytes = _avro_long(correlation_length)
        if len(payload) != size:
            size = len(payload)
            size_bytes = _avro_long(size)
        append(b"".join((correlation_length_bytes, correlation, fixed, size_bytes, payload,
                         tail)))
    return datums


_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def _avro_long(n: int) -> bytes:
    """Avro int/long: zig-zag, then base-128 varint."""
    if 0 <= n < 64:
        return _SMALL_LONGS[n]
    if 0 < n < 8192:  # two bytes (payload lengths, request ids): skip the general loop
        zigzag = n << 1
        return bytes(((zigzag & 0x7F) | 0x80, zigzag >> 7))
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise RecordEncodeError(f"cannot encode ClientData: {n} does not fit an Avro long")
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_LONGS = [bytes((n << 1,)) for n in range(64)]


@functools.lru_cache(maxsize=2)
def _avro_timestamp(timestamp_ms: int) -> bytes:
    """`_avro_long` for timestamps: messages relayed within one millisecond share the bytes."""
    return _avro_long(timestamp_ms)


def _avro_string(text: str) -> bytes:
    data = text.encode()
    return _avro_long(len(data)) + data


def decode(record_type: type[R], data: bytes) -> R:
    """Decode a plain Avro binary datum of `record_type`; raises RecordDecodeError.

    ClientData is accepted in both the current and the legacy (no `configName`) layout.
    """
    codec = _CODECS[record_type]
    try:
        datum = _read(codec.schema, data)
    except Exception as exc:  # fastavro signals malformed input with assorted builtin errors
        if record_type is not ClientData:
            raise _decode_error(record_type, data, exc) from exc
        try:
            datum = _read(_LEGACY_CLIENT_DATA_SCHEMA, data)
        except Exception:
            raise _decode_error(record_type, data, exc) from exc
        datum["configName"] = None
    result: R = codec.from_datum(datum)
    return result


def _decode_error(record_type: type, data: bytes, exc: Exception) -> RecordDecodeError:
    return RecordDecodeError(
        f"{len(data)} bytes are not an Avro {record_type.__name__} datum "
        f"({type(exc).__name__}: {exc}); check that the sender uses the same schema version"
    )
