"""The hand-written ExtensionData reader gives what the generic fastavro reader gives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.kaa import records
from kpc_trio.kaa.extension_data import read_extension_data
from kpc_trio.kaa.records import ExtensionData, RecordDecodeError
from tests.unit.test_records import record_strategy


@given(record_strategy(ExtensionData))
def test_reads_every_record_like_fastavro(record: ExtensionData) -> None:
    datum = records.encode(record)
    assert read_extension_data(datum) == records.decode(ExtensionData, datum) == record


@given(record_strategy(ExtensionData), st.binary(max_size=8))
def test_trailing_bytes_are_tolerated_like_fastavro(record: ExtensionData, tail: bytes) -> None:
    assert read_extension_data(records.encode(record) + tail) == record


@given(st.binary(max_size=120))
def test_arbitrary_bytes_give_fastavros_record_or_a_decode_error(data: bytes) -> None:
    try:
        expected = records.decode(ExtensionData, data)
    except RecordDecodeError:
        with pytest.raises(RecordDecodeError, match="ExtensionData"):
            read_extension_data(data)
        return
    assert read_extension_data(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x02a\x00\x00\x00\x00\x00\x02b\x06", id="requestId-union-branch-3"),
        pytest.param(b"\x04\xff\xfe", id="correlationId-not-utf8"),
        pytest.param(b"\x03", id="negative-string-length"),
        pytest.param(b"\x00" + b"\xff" * 11, id="endless-varint"),
    ],
)
def test_malformed_data_raises_a_decode_error_naming_the_record(data: bytes) -> None:
    with pytest.raises(RecordDecodeError, match="cannot decode ExtensionData"):
        read_extension_data(data)
