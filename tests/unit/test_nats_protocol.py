"""The sans-IO NATS client protocol: frames, server stream parsing, URLs."""

from __future__ import annotations

import contextlib
import itertools
import json
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.nats.protocol import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_PORT,
    MAX_CONTROL_LINE,
    Delivery,
    InboundMessage,
    NatsProtocolError,
    NatsServerAddress,
    NatsUrlError,
    OutboundMessage,
    Ping,
    Pong,
    PubFrames,
    ServerError,
    ServerEvent,
    ServerInfo,
    ServerStreamParser,
    connect_frame,
    parse_url,
    redact_url,
    sub_frame,
    subject_problem,
    unsub_frame,
)


def test_frames_follow_the_nats_protocol() -> None:
    frames = PubFrames()
    frames.add("kaa.v1.service.dcx.esp.ClientData", "kaa.v1.replica.r1.esp.ExtensionData")
    frames.add("kaa.v1.events.kpc.endpoint.connectivity.connected", "")
    batch = [
        OutboundMessage("kaa.v1.service.dcx.esp.ClientData", b"\x00ab\r\n",
                        "kaa.v1.replica.r1.esp.ExtensionData"),
        OutboundMessage("kaa.v1.events.kpc.endpoint.connectivity.connected", b""),
    ]
    assert frames.frames(batch) == (
        b"PUB kaa.v1.service.dcx.esp.ClientData kaa.v1.replica.r1.esp.ExtensionData 5\r\n"
        b"\x00ab\r\n\r\n"
        b"PUB kaa.v1.events.kpc.endpoint.connectivity.connected 0\r\n\r\n"
    )


def test_frames_of_a_pair_forgotten_at_the_bound_are_still_written() -> None:
    frames = PubFrames()
    frames.add("a", "")
    for index in range(PubFrames.MAX_HEADS):
        frames.add(f"s{index}", "r")
    assert not frames.checked("a", "")
    assert frames.frames([OutboundMessage("a", b"x")]) == b"PUB a 1\r\nx\r\n"


def test_checked_frames_are_appended_only_for_known_pairs_within_max_payload() -> None:
    frames = PubFrames()
    frames.add("a", "r")
    parts = [b"before"]
    known = [OutboundMessage("a", b"xy", "r"), OutboundMessage("a", b"", "r")]
    assert frames.append_checked(parts, known, max_payload=2)
    assert b"".join(parts) == b"beforePUB a r 2\r\nxy\r\nPUB a r 0\r\n\r\n"
    for unchecked in ([*known, OutboundMessage("b", b"x", "r")],  # a pair never checked
                      [*known, OutboundMessage("a", b"xyz", "r")]):  # over max_payload
        assert not frames.append_checked(parts, unchecked, max_payload=2)
        assert b"".join(parts) == b"beforePUB a r 2\r\nxy\r\nPUB a r 0\r\n\r\n"


# -- the server stream ----------------------------------------------------------------------------

def parse(data: bytes) -> list[ServerEvent]:
    return ServerStreamParser().feed(data)


def test_msg_without_and_with_reply() -> None:
    assert parse(b"MSG kaa.a 7 5\r\nhello\r\nMSG kaa.b 8 inbox.1 0\r\n\r\n") == [
        Delivery(7, InboundMessage("kaa.a", "", b"hello")),
        Delivery(8, InboundMessage("kaa.b", "inbox.1", b"")),
    ]


def test_payload_may_contain_crlf_and_control_words() -> None:
    payload = b"\r\nPING\r\nMSG x 1 2\r\n\x00"
    assert parse(b"MSG s 1 %d\r\n%s\r\nPONG\r\n" % (len(payload), payload)) == [
        Delivery(1, InboundMessage("s", "", payload)), Pong()]


def test_control_operations() -> None:
    info = b'INFO {"server_id":"N1","max_payload":4096,"tls_required":true}\r\n'
    assert parse(info + b"PING\r\n+OK\r\nPONG\r\n-ERR 'Authorization Violation'\r\n") == [
        ServerInfo(max_payload=4096, tls_required=True, server_name="N1"),
        Ping(), Pong(), ServerError("Authorization Violation"),
    ]


def test_info_without_optional_fields_has_the_defaults() -> None:
    assert parse(b'INFO {"server_name":"n"}\r\n') == [
        ServerInfo(DEFAULT_MAX_PAYLOAD, tls_required=False, server_name="n")]


def test_operations_are_case_insensitive() -> None:
    assert parse(b"ping\r\nmsg s 3 1\r\nx\r\n") == [
        Ping(), Delivery(3, InboundMessage("s", "", b"x"))]


def test_hmsg_with_a_status_is_dropped() -> None:
    headers = b"NATS/1.0 503\r\n\r\n"
    frame = b"HMSG inbox.1 4 %d %d\r\n%s\r\n" % (len(headers), len(headers), headers)
    assert parse(frame + b"PONG\r\n") == [Pong()]


def test_hmsg_with_ordinary_headers_yields_the_payload_alone() -> None:
    headers = b"NATS/1.0\r\nKaa-Trace: 1\r\n\r\n"
    total = len(headers) + 4
    assert parse(b"HMSG s 9 re %d %d\r\n%sdata\r\n" % (len(headers), total, headers)) == [
        Delivery(9, InboundMessage("s", "re", b"data"))]


def test_incomplete_frames_wait_for_the_rest() -> None:
    parser = ServerStreamParser()
    assert parser.feed(b"MSG s 1 4\r\nab") == []
    assert parser.feed(b"cd\r") == []
    assert parser.feed(b"\nPI") == [Delivery(1, InboundMessage("s", "", b"abcd"))]
    assert parser.feed(b"NG\r\n") == [Ping()]


_STREAM = (
    b'INFO {"server_id":"a","max_payload":2048}\r\n'
    b"PING\r\n"
    b"MSG kaa.x 1 3\r\n\r\n\r\r\n"
    b"HMSG kaa.y 2 reply 12 15\r\nNATS/1.0\r\n\r\nabc\r\n"
    b"HMSG kaa.y 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    b"+OK\r\n"
    b"MSG kaa.z 3 inbox 0\r\n\r\n"
    b"-ERR 'Slow Consumer'\r\n"
    b"PONG\r\n"
)
_STREAM_EVENTS = [  # +OK and the 503 status yield nothing
    ServerInfo(max_payload=2048, server_name="a"), Ping(),
    Delivery(1, InboundMessage("kaa.x", "", b"\r\n\r")),
    Delivery(2, InboundMessage("kaa.y", "reply", b"abc")),
    Delivery(3, InboundMessage("kaa.z", "inbox", b"")),
    ServerError("Slow Consumer"), Pong(),
]


@given(st.lists(st.integers(0, len(_STREAM)), max_size=12))
def test_a_stream_split_anywhere_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(_STREAM)]
    parser = ServerStreamParser()
    events = [event for start, end in itertools.pairwise(bounds)
              for event in parser.feed(_STREAM[start:end])]
    assert events == _STREAM_EVENTS


def test_a_stream_fed_byte_by_byte_gives_the_same_events() -> None:
    parser = ServerStreamParser()
    events = [e for index in range(len(_STREAM)) for e in parser.feed(_STREAM[index:index + 1])]
    assert events == _STREAM_EVENTS


@pytest.mark.parametrize("frame", [
    b"MSG s\r\n",  # no sid, no size
    b"MSG s 1\r\n",  # no size
    b"MSG s x 1\r\nx\r\n",  # sid not a number
    b"MSG s 1 y\r\n",  # size not a number
    b"MSG s 1 -1\r\n",
    b"MSG s 1 r extra 1\r\nx\r\n",
    b"HMSG s 1 5 3\r\nabc\r\n",  # headers longer than the whole
    b"HMSG s 1 3\r\nabc\r\n",  # no header size
    b"FOO bar\r\n",
    b"INFO {not json}\r\n",
    b"INFO []\r\n",
    b'INFO {"max_payload":"lots"}\r\n',
])
def test_malformed_control_lines_raise(frame: bytes) -> None:
    with pytest.raises(NatsProtocolError):
        parse(frame)


def test_a_payload_not_followed_by_crlf_raises() -> None:
    with pytest.raises(NatsProtocolError, match="CRLF"):
        parse(b"MSG s 1 3\r\nabcde")


def test_an_over_long_control_line_raises() -> None:
    parser = ServerStreamParser()
    assert parser.feed(b"INFO " + b"x" * (MAX_CONTROL_LINE - 5)) == []  # may still be completed
    with pytest.raises(NatsProtocolError, match="control line longer"):
        parser.feed(b"xx")


def test_a_long_payload_is_not_taken_for_a_long_control_line() -> None:
    payload = b"p" * (2 * MAX_CONTROL_LINE)
    parser = ServerStreamParser()
    assert parser.feed(b"MSG s 1 %d\r\n%s" % (len(payload), payload[:-1])) == []
    assert parser.feed(payload[-1:] + b"\r\n") == [Delivery(1, InboundMessage("s", "", payload))]


_free = st.binary(max_size=12)
_protocol_pieces = st.one_of(
    st.sampled_from([b"MSG ", b"HMSG ", b"INFO ", b"PING", b"PONG", b"+OK", b"-ERR ", b"\r\n",
                     b" ", b"1", b"0", b"12", b"-1", b'{"max_payload":', b"}", b"NATS/1.0 503"]),
    _free,
)


@given(st.lists(_protocol_pieces, max_size=40), st.lists(st.integers(0, 400), max_size=5))
def test_arbitrary_bytes_only_raise_nats_protocol_error(pieces: list[bytes],
                                                        cuts: list[int]) -> None:
    data = b"".join(pieces)
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    parser = ServerStreamParser()
    with contextlib.suppress(NatsProtocolError):
        for start, end in itertools.pairwise(bounds):
            events = parser.feed(data[start:end])
            assert all(isinstance(e, typing.get_args(ServerEvent)) for e in events)


def test_a_subject_that_is_not_utf8_is_delivered_with_replacement_characters() -> None:
    # nats-server relays such subjects; the subscription is matched by sid, not by subject.
    assert parse(b"MSG \xff 1 2\r\nok\r\nMSG s 1 \xfe 0\r\n\r\n") == [
        Delivery(1, InboundMessage("\ufffd", "", b"ok")),
        Delivery(1, InboundMessage("s", "\ufffd", b"")),
    ]


def test_an_infinite_max_payload_raises_a_protocol_error() -> None:
    with pytest.raises(NatsProtocolError):
        parse(b'INFO {"max_payload":1e999}\r\n')


def test_a_deeply_nested_info_raises_a_protocol_error() -> None:
    with pytest.raises(NatsProtocolError):
        parse(b"INFO " + b"[" * 100_000 + b"\r\n")


# -- URLs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("nats://kpc:s3cret@nats.example:4333",
     NatsServerAddress("nats.example", 4333, user="kpc", password="s3cret")),
    ("nats://t0ken@nats.example", NatsServerAddress("nats.example", token="t0ken")),
    ("nats://kpc:p%40ss%3Aw%2Frd@h:1", NatsServerAddress("h", 1, user="kpc", password="p@ss:w/rd")),
    ("nats://kpc:@h", NatsServerAddress("h", user="kpc", password="")),
    ("nats.example", NatsServerAddress("nats.example", DEFAULT_PORT)),
    ("nats.example:5222", NatsServerAddress("nats.example", 5222)),
    ("nats://nats.example", NatsServerAddress("nats.example", DEFAULT_PORT)),
    ("tls://u:p@nats.example", NatsServerAddress("nats.example", tls=True, user="u", password="p")),
])
def test_parse_url(url: str, expected: NatsServerAddress) -> None:
    assert parse_url(url) == expected


def test_credentials_for_connect() -> None:
    assert parse_url("nats://kpc:s3cret@h").credentials() == {"user": "kpc", "pass": "s3cret"}
    assert parse_url("nats://t0ken@h").credentials() == {"auth_token": "t0ken"}
    assert parse_url("nats://h").credentials() == {}


def test_address_repr_and_display_hide_credentials() -> None:
    address = parse_url("nats://kpc:s3cret@h:4")
    token = parse_url("nats://t0ken@h:4")
    assert address.display == "h:4"
    assert "s3cret" not in repr(address) and "t0ken" not in repr(token)


@pytest.mark.parametrize(("url", "problem"), [
    ("http://kpc:s3cret@h:4222", "scheme"),
    ("nats://kpc:s3cret@h:port", "port"),
    ("nats://kpc:s3cret@h:70000", "port"),
    ("nats://kpc:s3cret@:4222", "no host"),
    ("nats://s3cret@h:x", "port"),
])
def test_bad_urls_raise_without_the_secret(url: str, problem: str) -> None:
    with pytest.raises(NatsUrlError, match=problem) as raised:
        parse_url(url)
    assert "s3cret" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_port_zero_is_refused() -> None:
    with pytest.raises(NatsUrlError, match="port"):
        parse_url("nats://h:0")


def test_redact_url_keeps_everything_but_the_secret() -> None:
    assert redact_url("tls://kpc:p%40ss@h:4222") == "tls://kpc:***@h:4222"
    assert redact_url("t0ken@h") == "nats://***@h"
    assert redact_url("h:4222") == "h:4222"


# -- what the client sends ------------------------------------------------------------------------

def connect_options(frame: bytes) -> dict[str, object]:
    assert frame.startswith(b"CONNECT ") and frame.endswith(b"\r\n")
    options: dict[str, object] = json.loads(frame[len(b"CONNECT "):])
    return options


def test_connect_frame_with_user_and_password() -> None:
    credentials = parse_url("nats://u:p@h").credentials()
    options = connect_options(connect_frame("kpc-1", "0.1", credentials))
    assert options["user"] == "u" and options["pass"] == "p"
    assert "auth_token" not in options
    assert options["verbose"] is False and options["headers"] is False
    assert options["name"] == "kpc-1" and options["version"] == "0.1"
    assert options["protocol"] == 1


def test_connect_frame_with_a_token_or_nothing() -> None:
    options = connect_options(connect_frame("kpc", "0.1", {"auth_token": "t"}))
    assert options["auth_token"] == "t" and "user" not in options and "pass" not in options
    anonymous = connect_options(connect_frame("kpc", "0.1", {}))
    assert not {"user", "pass", "auth_token"} & anonymous.keys()


def test_sub_and_unsub_frames() -> None:
    assert sub_frame("kaa.v1.>", "", 3) == b"SUB kaa.v1.> 3\r\n"
    assert sub_frame("kaa.v1.>", "kpc", 4) == b"SUB kaa.v1.> kpc 4\r\n"
    assert unsub_frame(4) == b"UNSUB 4\r\n"


@pytest.mark.parametrize("subject", ["", "a b", "a\tb", "a\r\nPUB x 1"])
def test_subjects_with_whitespace_have_a_problem(subject: str) -> None:
    assert subject_problem(subject) is not None


def test_an_ordinary_subject_has_no_problem() -> None:
    assert subject_problem("kaa.v1.service.dcx.esp.ClientData") is None


def test_a_message_larger_than_the_servers_max_payload_is_refused_before_it_is_buffered() -> None:
    parser = ServerStreamParser()
    assert parser.feed(b'INFO {"max_payload":1024}\r\nMSG s 1 1024\r\n') == [
        ServerInfo(max_payload=1024)]
    with pytest.raises(NatsProtocolError, match="exceeds the server's max_payload of 1024"):
        ServerStreamParser().feed(b'INFO {"max_payload":1024}\r\nMSG s 1 1025\r\n')


@pytest.mark.parametrize(("text", "kind"), [
    ("Authorization Violation", "authorization_violation"),
    ("maximum connections exceeded", "maximum_connections"),
    ("Stale Connection", "stale_connection"),
    ("Slow Consumer", "slow_consumer"),
    ("Maximum Payload Violation", "maximum_payload"),
    ("Secure Connection - TLS Required", "tls_required"),
    ("User Authentication Expired", "authentication_expired"),
    ("something new", "other"),
])
def test_server_errors_have_a_bounded_kind(text: str, kind: str) -> None:
    (error,) = ServerStreamParser().feed(f"-ERR '{text}'\r\n".encode())
    assert isinstance(error, ServerError)
    assert error.kind == kind
    assert error.refused_publish is None and error.refused_subscription is None


def test_permission_violations_name_their_subject() -> None:
    publish, subscription = ServerStreamParser().feed(
        b"-ERR 'Permissions Violation for Publish to \"kaa.v1.service.x.esp.ClientData\"'\r\n"
        b"-ERR 'Permissions Violation for Subscription to \"kaa.v1.replica.r1.>\"'\r\n")
    assert isinstance(publish, ServerError) and isinstance(subscription, ServerError)
    assert publish.kind == "publish_permission"
    assert publish.refused_publish == "kaa.v1.service.x.esp.ClientData"
    assert subscription.refused_subscription == "kaa.v1.replica.r1.>"


def test_info_carries_the_cluster_urls_lame_duck_and_nonce() -> None:
    (info,) = ServerStreamParser().feed(
        b'INFO {"connect_urls":["10.0.0.1:4222","10.0.0.2:4222"],"ldm":true,"nonce":"abc"}\r\n')
    assert isinstance(info, ServerInfo)
    assert info.connect_urls == ("10.0.0.1:4222", "10.0.0.2:4222")
    assert info.lame_duck and info.nonce == "abc"
    (plain,) = ServerStreamParser().feed(b"INFO {}\r\n")
    assert isinstance(plain, ServerInfo) and plain.connect_urls is None and not plain.lame_duck
