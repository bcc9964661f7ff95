"""1/KP topic grammar: spec section 10 scenarios, KPC's own errors, response topics."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpc_trio.kaa.kp1 import (
    MAX_REQUEST_ID,
    ApplicationRegistry,
    ApplicationRegistryError,
    Kp1Error,
    Route,
    error_payload,
    is_success,
    parse_topic,
    response_topic,
)

AV = "demo_application_v1"
TOKEN = "JTjdbENzHh"
DEMO_EXTENSIONS = ["dcx", "epmx", "cmx", "cmx_ota", "cex", "bcx", "tsx"]
AWARE = {ext: True for ext in ["dcx", "epmx", "cmx", "cmx_ota", "cex", "bcx", "rsx"]}
REGISTRY = ApplicationRegistry.from_mappings(
    {
        "demo_application": {AV: DEMO_EXTENSIONS},
        "kettle": {"kettle-v1": ["rsx", "dcx"]},
    },
    {**AWARE, "tsx": False},  # the documented config declares tsx endpoint-unaware (S14)
)


def route(extension: str, path: str, request_id: int | None, token: str | None = TOKEN) -> Route:
    return Route(AV, extension, token, path, request_id)


SCENARIOS = [
    # S1, S2, S3: data collection
    (f"kp1/{AV}/dcx/{TOKEN}/json/42", route("dcx", "/json", 42)),
    (f"kp1/{AV}/dcx/{TOKEN}/json", route("dcx", "/json", None)),
    (f"kp1/{AV}/dcx/{TOKEN}/plain/temperature", route("dcx", "/plain/temperature", None)),
    # S4: metadata
    (f"kp1/{AV}/epmx/{TOKEN}/get/7", route("epmx", "/get", 7)),
    (f"kp1/{AV}/epmx/{TOKEN}/get/keys/8", route("epmx", "/get/keys", 8)),
    (f"kp1/{AV}/epmx/{TOKEN}/update/keys/12", route("epmx", "/update/keys", 12)),
    (f"kp1/{AV}/epmx/{TOKEN}/update", route("epmx", "/update", None)),
    (f"kp1/{AV}/epmx/{TOKEN}/delete/keys", route("epmx", "/delete/keys", None)),
    # S5: configuration, named configuration, OTA
    (f"kp1/{AV}/cmx/{TOKEN}/config/json/3", route("cmx", "/config/json", 3)),
    (f"kp1/{AV}/cmx/{TOKEN}/applied/json", route("cmx", "/applied/json", None)),
    (f"kp1/{AV}/cmx/{TOKEN}/config/json/night", route("cmx", "/config/json/night", None)),
    (f"kp1/{AV}/cmx_ota/{TOKEN}/config/json/4", route("cmx_ota", "/config/json", 4)),
    # S6: commands
    (f"kp1/{AV}/cex/{TOKEN}/result/reboot", route("cex", "/result/reboot", None)),
    (f"kp1/{AV}/cex/{TOKEN}/result/reboot/5", route("cex", "/result/reboot", 5)),
    (f"kp1/{AV}/cex/{TOKEN}/command/reboot/9", route("cex", "/command/reboot", 9)),
    # S7: upload token
    (f"kp1/{AV}/bcx/{TOKEN}/token", route("bcx", "/token", None)),
    # S8: request status; the trailing integer is the request id
    (
        "kp1/kettle-v1/rsx/oolaiY5P/dcx/234531",
        Route("kettle-v1", "rsx", "oolaiY5P", "/dcx", 234531),
    ),
    # S14: endpoint-unaware: no token level, the path may be empty
    (f"kp1/{AV}/tsx", route("tsx", "", None, token=None)),
    (f"kp1/{AV}/tsx/5", route("tsx", "", 5, token=None)),
    (f"kp1/{AV}/tsx/time/zone/6", route("tsx", "/time/zone", 6, token=None)),
    # an endpoint-aware request with nothing after the token
    (f"kp1/{AV}/dcx/{TOKEN}", route("dcx", "", None)),
    (f"kp1/{AV}/dcx/{TOKEN}/11", route("dcx", "", 11)),
    # client topics ending in /status or /error are ordinary requests (spec 4.1 step 7)
    (f"kp1/{AV}/dcx/{TOKEN}/json/status", route("dcx", "/json/status", None)),
]


@pytest.mark.parametrize(("topic", "expected"), SCENARIOS)
def test_scenario_topics(topic: str, expected: Route) -> None:
    assert parse_topic(topic, REGISTRY) == expected


@pytest.mark.parametrize(("topic", "expected"), SCENARIOS)
def test_answer_is_request_topic_plus_status_or_error(topic: str, expected: Route) -> None:
    parsed = parse_topic(topic, REGISTRY)
    fields = (parsed.app_version, parsed.extension, parsed.token, parsed.resource_path)
    assert response_topic(*fields, parsed.request_id, success=True) == topic + "/status"
    assert response_topic(*fields, parsed.request_id, success=False) == topic + "/error"


def test_endpoint_aware_tsx_takes_a_token_level() -> None:
    registry = ApplicationRegistry.from_mappings({"demo_application": {AV: ["tsx"]}}, {"tsx": True})
    assert parse_topic(f"kp1/{AV}/tsx/{TOKEN}", registry) == route("tsx", "", None)


def test_extension_missing_from_the_awareness_map_is_endpoint_unaware() -> None:
    registry = ApplicationRegistry.from_mappings({"demo_application": {AV: ["custom"]}}, {})
    assert parse_topic(f"kp1/{AV}/custom/{TOKEN}/x", registry).token is None
    assert parse_topic(f"kp1/{AV}/custom/{TOKEN}/x", registry).resource_path == f"/{TOKEN}/x"


@pytest.mark.parametrize(
    ("last_level", "request_id", "path"),
    [
        ("0", 0, "/json"),
        (str(MAX_REQUEST_ID), MAX_REQUEST_ID, "/json"),
        (str(MAX_REQUEST_ID + 1), None, f"/json/{MAX_REQUEST_ID + 1}"),
        ("9" * 5000, None, "/json/" + "9" * 5000),  # beyond int()'s digit limit
        ("007", None, "/json/007"),  # would not round-trip into the response topic
        ("-1", None, "/json/-1"),
        ("\u0663", None, "/json/\u0663"),  # ARABIC-INDIC DIGIT THREE: not ASCII
        ("", None, "/json/"),
    ],
)
def test_request_id_bounds(last_level: str, request_id: int | None, path: str) -> None:
    parsed = parse_topic(f"kp1/{AV}/dcx/{TOKEN}/json/{last_level}", REGISTRY)
    assert (parsed.request_id, parsed.resource_path) == (request_id, path)


def test_the_token_level_is_never_a_request_id() -> None:
    assert parse_topic(f"kp1/{AV}/dcx/12", REGISTRY) == route("dcx", "", None, token="12")


@pytest.mark.parametrize(
    ("topic", "status_code", "reason_phrase", "request_id"),
    [
        (f"kp2/{AV}/dcx/{TOKEN}/json/3", 400, "Bad resource path", 3),
        (f"/kp1/{AV}/dcx/{TOKEN}/json/3", 400, "Bad resource path", 3),
        (f"kp1/{AV}", 400, "Bad resource path", None),
        ("kp1", 400, "Bad resource path", None),
        ("status/7", 400, "Bad resource path", None),  # a number before the extension level
        ("kp1/unknown-v1/7", 404, "Application version not found", None),  # the extension level
        ("", 400, "Bad resource path", None),
        (f"kp1//dcx/{TOKEN}/json/3", 400, "Bad resource path", 3),
        (f"kp1/{AV}//{TOKEN}/json/3", 400, "Bad resource path", 3),
        (f"kp1/unknown-v1/dcx/{TOKEN}/json/3", 404, "Application version not found", 3),
        (f"kp1/unknown-v1/dcx/{TOKEN}/json", 404, "Application version not found", None),
        (f"kp1/kettle-v1/epmx/{TOKEN}/get/3", 403, "Extension not allowed", 3),
        (f"kp1/{AV}/dcx", 400, "Invalid endpoint token", None),
        (f"kp1/{AV}/dcx//json/3", 400, "Invalid endpoint token", 3),
        (f"kp1/{AV}/dcx/JTjd.bENzHh/json/3", 400, "Invalid endpoint token", 3),
        (f"kp1/{AV}/dcx/JTjd.bENzHh/json", 400, "Invalid endpoint token", None),
    ],
)
def test_kpc_errors(
    topic: str, status_code: int, reason_phrase: str, request_id: int | None
) -> None:
    with pytest.raises(Kp1Error) as caught:
        parse_topic(topic, REGISTRY)
    error = caught.value
    assert (error.status_code, error.reason_phrase, error.request_id) == (
        status_code,
        reason_phrase,
        request_id,
    )
    assert json.loads(error_payload(error.status_code, error.reason_phrase)) == {
        "statusCode": status_code, "reasonPhrase": reason_phrase}


def test_kp1_error_message_names_status_and_reason() -> None:
    error = Kp1Error(401, "Token revoked", 8)
    assert str(error) == "401 Token revoked"


def test_error_payload_is_compact_schema_json() -> None:
    expected = b'{"statusCode":401,"reasonPhrase":"Token revoked"}'
    assert error_payload(401, "Token revoked") == expected


@pytest.mark.parametrize(("status_code", "success"), [(200, True), (204, True), (299, True)])
def test_2xx_is_success(status_code: int, success: bool) -> None:
    assert is_success(status_code) is success


@pytest.mark.parametrize("status_code", [100, 199, 300, 400, 404, 500, 503])
def test_non_2xx_is_an_error(status_code: int) -> None:
    assert not is_success(status_code)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # pushes without request id (spec 4.5)
        (("cmx", TOKEN, "/config/json", None, True), f"kp1/{AV}/cmx/{TOKEN}/config/json/status"),
        (
            ("cex", TOKEN, "/command/reboot", None, False),
            f"kp1/{AV}/cex/{TOKEN}/command/reboot/error",
        ),
        # endpoint-unaware: no token level
        (("tsx", None, "", 4, True), f"kp1/{AV}/tsx/4/status"),
        # a resource path sent without its leading slash still gets its own level
        (("dcx", TOKEN, "json", 42, True), f"kp1/{AV}/dcx/{TOKEN}/json/42/status"),
    ],
)
def test_response_topic(args: tuple[str, str | None, str, int | None, bool], expected: str) -> None:
    extension, token, path, request_id, success = args
    assert response_topic(AV, extension, token, path, request_id, success=success) == expected


def test_registry_resolves_application_names() -> None:
    assert REGISTRY.app_name(AV) == "demo_application"
    assert REGISTRY.app_name("kettle-v1") == "kettle"
    assert REGISTRY.app_name("demo_application") is None


def test_registry_refuses_an_appversion_in_two_applications() -> None:
    with pytest.raises(ApplicationRegistryError, match="'shared-v1'"):
        ApplicationRegistry.from_mappings({"a": {"shared-v1": ["dcx"]}, "b": {"shared-v1": []}}, {})


# ---- properties ----------------------------------------------------------------------------------

LEVEL = st.text(st.characters(exclude_characters="/+#"), max_size=8)
TOKENS = st.text(st.characters(exclude_characters="/+#."), min_size=1, max_size=12)


@st.composite
def request_topics(draw: st.DrawFn) -> tuple[str, Route]:
    app_version = draw(st.sampled_from([AV, "kettle-v1"]))
    extension = draw(st.sampled_from(DEMO_EXTENSIONS if app_version == AV else ["rsx", "dcx"]))
    token = draw(TOKENS) if extension != "tsx" else None
    levels = draw(st.lists(LEVEL, max_size=4))
    request_id = draw(st.none() | st.integers(0, MAX_REQUEST_ID))
    if request_id is None and levels and levels[-1] == str(parse_or_none(levels[-1])):
        levels.append("x")  # keep a number-like last level from being read as a request id
    parts = ["kp1", app_version, extension]
    parts += [token] if token is not None else []
    parts += levels
    parts += [str(request_id)] if request_id is not None else []
    path = "/" + "/".join(levels) if levels else ""
    return "/".join(parts), Route(app_version, extension, token, path, request_id)


def parse_or_none(level: str) -> int | None:
    return int(level) if level.isascii() and level.isdigit() and len(level) < 12 else None


@given(request_topics())
def test_generated_topics_parse_to_their_route(case: tuple[str, Route]) -> None:
    topic, expected = case
    assert parse_topic(topic, REGISTRY) == expected


@given(st.lists(LEVEL, min_size=1, max_size=8).map("/".join))
def test_any_topic_routes_or_fails_with_kp1_error(topic: str) -> None:
    for candidate in (topic, f"kp1/{AV}/dcx/" + topic, f"kp1/{AV}/tsx/" + topic):
        try:
            parsed = parse_topic(candidate, REGISTRY)
        except Kp1Error as error:
            assert error.status_code in (400, 403, 404)
            continue
        fields = (parsed.app_version, parsed.extension, parsed.token, parsed.resource_path)
        assert response_topic(*fields, parsed.request_id, success=True) == candidate + "/status"


@given(st.lists(LEVEL, max_size=3), st.integers(0, MAX_REQUEST_ID))
def test_errors_carry_the_trailing_request_id(levels: list[str], request_id: int) -> None:
    topic = "/".join(["kp1", "unknown-v1", "dcx", TOKEN, *levels, str(request_id)])
    with pytest.raises(Kp1Error) as caught:
        parse_topic(topic, REGISTRY)
    assert caught.value.request_id == request_id
