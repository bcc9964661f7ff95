"""Avro records: byte-exact ClientData, round trips of every record, legacy layout, errors."""

from __future__ import annotations

import json
import typing
from importlib import resources

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.kaa import records
from kpc_trio.kaa.records import (
    ClientData,
    ExtensionData,
    RecordDecodeError,
    RecordEncodeError,
    TrafficReportEvent,
    TrafficStat,
    decode,
    encode,
    encode_client_data,
)

ALL_RECORD_TYPES = typing.get_args(records.Record)

LONGS = st.integers(-(2**63), 2**63 - 1)
INTS = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(max_size=20)
STATS = st.builds(TrafficStat, LONGS, LONGS, LONGS, LONGS)
TRAFFIC_STATS = st.dictionaries(
    TEXT, st.dictionaries(TEXT, st.dictionaries(TEXT, STATS)), max_size=3
)
# Keyed by the attrs annotation text (the module uses postponed annotations).
STRATEGY_BY_TYPE: dict[str, st.SearchStrategy[typing.Any]] = {
    "str": TEXT,
    "str | None": st.none() | TEXT,
    "int": LONGS,
    "int | None": st.none() | INTS,  # requestId is an Avro int
    "bytes": st.binary(max_size=64),
    "bytes | None": st.none() | st.binary(max_size=64),
    "dict[str, str]": st.dictionaries(TEXT, TEXT, max_size=5),
    "tuple[str, ...]": st.lists(TEXT, max_size=5).map(tuple),
    "TenantTrafficStats": TRAFFIC_STATS,
}


def record_strategy(record_type: type) -> st.SearchStrategy[typing.Any]:
    fields = {
        a.name: INTS if a.name == "status_code" else STRATEGY_BY_TYPE[a.type]
        for a in attrs.fields(record_type)
    }
    return st.builds(record_type, **fields)


ANY_RECORD = st.sampled_from(ALL_RECORD_TYPES).flatmap(record_strategy)


def s1_client_data(**changes: typing.Any) -> ClientData:
    base = ClientData(
        correlation_id="c1",
        timestamp=1,
        timeout=0,
        app_version_name="av",
        endpoint_id="ep",
        resource_path="/json",
        request_id=42,
        payload=b"\x01\x02",
    )
    return attrs.evolve(base, **changes)


# correlationId "c1" | timestamp 1 | timeout 0 | appVersionName "av" |
# endpointId branch 0 (string) "ep" | resourcePath "/json" | requestId branch 0 (int) 42 |
# payload 01 02 | configName branch 0 (null)
S1_VECTOR = bytes.fromhex("04 6331 02 00 04 6176 00 04 6570 0a 2f6a736f6e 00 54 04 0102 00")


def test_client_data_byte_exact_vector() -> None:
    assert encode(s1_client_data()) == S1_VECTOR


def test_client_data_null_and_string_branches() -> None:
    data = encode(s1_client_data(endpoint_id=None, request_id=None, config_name="x"))
    # endpointId null = branch 1, requestId null = branch 1, configName string = branch 1
    assert data == bytes.fromhex("04 6331 02 00 04 6176 02 0a 2f6a736f6e 02 04 0102 02 02 78")


def test_legacy_client_data_omits_config_name() -> None:
    assert encode_client_data(s1_client_data(), with_config_name=False) == S1_VECTOR[:-1]
    assert encode_client_data(s1_client_data(), with_config_name=True) == S1_VECTOR


def test_legacy_client_data_refuses_a_config_name() -> None:
    with pytest.raises(RecordEncodeError, match="legacy"):
        encode_client_data(s1_client_data(config_name="night"), with_config_name=False)


def test_decode_accepts_legacy_client_data() -> None:
    assert decode(ClientData, S1_VECTOR[:-1]) == s1_client_data()


@given(ANY_RECORD)
def test_every_record_round_trips(record: records.Record) -> None:
    assert decode(type(record), encode(record)) == record


@given(record_strategy(ClientData), st.booleans())
def test_client_data_round_trips_in_both_layouts(cd: ClientData, with_config_name: bool) -> None:
    if not with_config_name:
        cd = attrs.evolve(cd, config_name=None)
    assert decode(ClientData, encode_client_data(cd, with_config_name=with_config_name)) == cd


def test_traffic_report_nests_stats_as_records() -> None:
    report = TrafficReportEvent(
        tenant_traffic_stats={"t1": {"app": {"ep1": TrafficStat(10, 20, 1, 2)}}},
        time_from=1_000_000_000,
        time_to=2_000_000_000,
        correlation_id="c",
        originator_replica_id="kpc-r1",
        timestamp=2000,
        timeout=0,
    )
    decoded = decode(TrafficReportEvent, encode(report))
    assert decoded.tenant_traffic_stats["t1"]["app"]["ep1"] == TrafficStat(10, 20, 1, 2)


def test_a_record_class_exists_for_every_schema_kpc_exchanges() -> None:
    schema_dir = resources.files("kpc_trio.kaa").joinpath("schemas")
    schema_names = {
        json.loads(f.read_text())["name"] for f in schema_dir.iterdir() if f.name.endswith(".avsc")
    }
    not_used_by_kpc = {
        "AppVersionUpdatedEvent",
        "RegisteredEvent",
        "UnregisteredEvent",
        "EndpointTokenStatusTransitionRequest",
        "EndpointTokenStatusTransitionResponse",
    }
    assert {t.__name__ for t in ALL_RECORD_TYPES} == schema_names - not_used_by_kpc


@pytest.mark.parametrize(
    "bad_field",
    [{"request_id": 2**31}, {"timestamp": "yesterday"}, {"payload": None}],
)
def test_encode_rejects_values_the_schema_cannot_carry(bad_field: dict[str, object]) -> None:
    with pytest.raises(RecordEncodeError, match="ClientData"):
        encode(s1_client_data(**bad_field))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(S1_VECTOR[:10], id="truncated-in-the-middle"),
        pytest.param(S1_VECTOR[:8] + b"\x06" + S1_VECTOR[9:], id="endpointId-union-branch-3"),
        pytest.param(bytes.fromhex("04 fffe") + S1_VECTOR[3:], id="correlationId-not-utf8"),
        pytest.param(b"\x03" + S1_VECTOR[1:], id="negative-string-length"),
    ],
)
def test_decode_rejects_malformed_bytes(data: bytes) -> None:
    with pytest.raises(RecordDecodeError, match="not an Avro ClientData datum"):
        decode(ClientData, data)


@given(st.binary(max_size=200), st.sampled_from(ALL_RECORD_TYPES))
def test_decode_of_arbitrary_bytes_raises_only_record_decode_error(
    data: bytes, record_type: type
) -> None:
    try:
        result = decode(record_type, data)
    except RecordDecodeError:
        return
    assert type(result) is record_type


def test_extension_data_with_null_payload() -> None:
    ed = ExtensionData(
        correlation_id="c",
        timestamp=5,
        timeout=0,
        app_version_name="demo_application_v1",
        extension_instance_name="dcx",
        endpoint_id="7ad263ec-3347-4c7d-af89-50c67061367a",
        resource_path="/json",
        request_id=42,
        payload=None,
        status_code=200,
    )
    assert decode(ExtensionData, encode(ed)) == ed


@given(record_strategy(ClientData))
def test_hand_written_client_data_writer_matches_fastavro(cd: ClientData) -> None:
    # encode() goes through fastavro's generic writer; encode_client_data() is the hot path.
    assert records.encode_client_data(cd) == records.encode(cd)
    if cd.config_name is None:
        legacy = records.encode_client_data(cd, with_config_name=False)
        assert legacy == records.encode(cd)[:-1]  # the same bytes without the null configName


@pytest.mark.parametrize("request_id", [2**31, -(2**31) - 1])
def test_client_data_writer_rejects_request_ids_beyond_avro_int(request_id: int) -> None:
    with pytest.raises(records.RecordEncodeError, match="requestId"):
        records.encode_client_data(s1_client_data(request_id=request_id))
