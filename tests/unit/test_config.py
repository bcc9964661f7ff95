from __future__ import annotations

import re
import textwrap
from pathlib import Path

import attrs
import pytest
import yaml

from kpc_trio import config as config_module
from kpc_trio.config import (
    Config,
    ConfigError,
    ExtensionInstance,
    config_reference,
    load_config,
    render_effective_config,
)
from kpc_trio.kaa.endpoints import DisconnectPolicy

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = (
    "python -c \"from kpc_trio.config import config_reference; print(config_reference(), end='')\""
)


@pytest.fixture(autouse=True)
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default config path at a file that does not exist (unless a test creates it)."""
    default = tmp_path / "srv" / "service-config.yml"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", str(default))
    return default


def write(tmp_path: Path, text: str, name: str = "service-config.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load_yaml(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path, text, env)
    return info.value


# ---------------------------------------------------------------------------------- defaults


def test_defaults_without_any_file() -> None:
    config = load_config(env={})
    assert config.source == "defaults"
    assert config.service.instance.name == "kpc"
    assert config.service.graceful_shutdown == 30.0
    assert config.server.port == 8008
    assert config.management.port == 8080
    assert config.nats.urls == ""
    assert (config.logging.level, config.logging.format) == ("INFO", "kv")
    assert config.license.required is False
    mqtt = config.kaa.kpc.transports.mqtt
    assert (mqtt.max_packet_size, mqtt.connect_timeout, mqtt.max_connections) == (1048576, 10.0, 0)
    assert (mqtt.max_inflight, mqtt.max_outbox_bytes) == (100, 1048576)
    assert (mqtt.tcp.enabled, mqtt.tcp.host, mqtt.tcp.port) == (True, "0.0.0.0", 1883)
    assert (mqtt.tls.enabled, mqtt.tls.port, mqtt.tls.client_auth) == (False, 8883, "request")
    assert (mqtt.tls.cert_file, mqtt.tls.key_file, mqtt.tls.ca_file) == ("", "", "")
    assert mqtt.tls.handshake_timeout == 10.0
    websocket = mqtt.websocket
    assert (websocket.enabled, websocket.port, websocket.path) == (False, 8081, "/ws")
    http = config.kaa.kpc.transports.http
    assert (http.enabled, http.port, http.request_timeout, http.max_body_size) == (
        False, 8082, 30.0, 1048576)
    auth = config.kaa.kpc.auth
    assert (auth.protocol, auth.client_provider, auth.token_provider) == ("cap", "ccm", "cm")
    assert (auth.request_timeout, auth.anonymous_allowed) == (5.0, True)
    assert (auth.token_cache.ttl, auth.token_cache.negative_ttl,
            auth.token_cache.max_entries) == (600.0, 30.0, 100000)
    assert (config.kaa.kpc.esp.message_timeout, config.kaa.kpc.esp.with_config_name) == (0, True)
    assert (config.kaa.kpc.traffic_report.enabled, config.kaa.kpc.traffic_report.period) == (
        True, 60.0)
    assert dict(config.kaa.applications) == {}
    assert dict(config.kaa.extension_instances) == {}


def test_replica_id_is_random_per_load() -> None:
    first, second = load_config(env={}), load_config(env={})
    assert re.fullmatch(r"kpc-[0-9a-f]{8}", first.service.instance.replica.id)
    assert first.service.instance.replica.id != second.service.instance.replica.id


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.kaa.applications["x"] = None  # type: ignore[index]


# ---------------------------------------------------------------------------------- file lookup


def test_app_config_path_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 9000}\n")
    config = load_config(env={"APP_CONFIG_PATH": path})
    assert (config.server.port, config.source) == (9000, path)


def test_explicit_path_wins_over_app_config_path(tmp_path: Path) -> None:
    chosen = write(tmp_path, "server: {port: 9001}\n", "chosen.yml")
    other = write(tmp_path, "server: {port: 9002}\n", "other.yml")
    assert load_config(chosen, env={"APP_CONFIG_PATH": other}).server.port == 9001


def test_default_file_is_used_when_present(no_default_file: Path) -> None:
    no_default_file.parent.mkdir()
    no_default_file.write_text("management: {port: 9100}\n")
    config = load_config(env={})
    assert (config.management.port, config.source) == (9100, str(no_default_file))


def test_missing_file_named_by_app_config_path_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match=re.escape(missing) + ": cannot read"):
        load_config(env={"APP_CONFIG_PATH": missing})


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(str(tmp_path), env={})  # a directory


def test_invalid_yaml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "server: {port: 8008\n")
    with pytest.raises(ConfigError, match=re.escape(path) + ": not valid YAML"):
        load_config(path, env={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = config_error(tmp_path, "- a\n- b\n")
    assert str(error).startswith("<top level>: expected a mapping of keys")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    config = load_config(path, env={})
    assert (config.source, config.server.port) == (path, 8008)


# ---------------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("text", [
    "service: {instance: {replica: {id: r1}}}",
    "service: {instance: {replica.id: r1}}",
    "service: {instance.replica.id: r1}",
    "service.instance.replica.id: r1",
    "service.instance: {replica: {id: r1}}",
])
def test_nested_and_dotted_keys_are_equivalent(tmp_path: Path, text: str) -> None:
    assert load_yaml(tmp_path, text).service.instance.replica.id == "r1"


def test_documented_dotted_form_inside_instance(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        service:
          instance:
            name: kpc-a
            replica.id: r1
          graceful-shutdown: 5s
        kaa.kpc.transports.mqtt:
          tcp.port: 1884
          tls: {enabled: true, cert-file: c.pem, key-file: k.pem}
    """)
    assert config.service.instance.name == "kpc-a"
    assert config.service.instance.replica.id == "r1"
    assert config.service.graceful_shutdown == 5.0
    assert config.kaa.kpc.transports.mqtt.tcp.port == 1884
    assert config.kaa.kpc.transports.mqtt.tls.cert_file == "c.pem"


def test_dotted_and_nested_sections_merge(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa.kpc.auth.token-cache.ttl: 1m
        kaa:
          kpc:
            auth: {request-timeout: 2s}
    """)
    assert config.kaa.kpc.auth.token_cache.ttl == 60.0
    assert config.kaa.kpc.auth.request_timeout == 2.0


def test_same_key_given_twice_is_an_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, """
        service:
          instance:
            replica.id: r1
            replica: {id: r2}
    """)
    assert str(error).startswith("service.instance.replica.id: given twice")
    assert error.key_path == "service.instance.replica.id"


def test_malformed_dotted_key_is_an_error(tmp_path: Path) -> None:
    error = config_error(tmp_path, "service: {instance..name: x}")
    assert str(error).startswith("service.instance..name: malformed dotted key")


def test_null_section_means_defaults(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "kaa:\n  kpc:\n    esp:\n")
    assert config.kaa.kpc.esp.with_config_name is True


# ---------------------------------------------------------------------------------- values


@pytest.mark.parametrize(("raw", "seconds"), [
    ("10s", 10.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("1.5h", 5400.0),
    ("7", 7.0), (2.5, 2.5), (45, 45.0),
])
def test_durations(tmp_path: Path, raw: object, seconds: float) -> None:
    text = yaml.safe_dump({"kaa": {"kpc": {"traffic-report": {"period": raw}}}})
    assert load_yaml(tmp_path, text).kaa.kpc.traffic_report.period == seconds


def test_choice_is_case_insensitive_and_canonical(tmp_path: Path) -> None:
    assert load_yaml(tmp_path, "logging: {level: debug}").logging.level == "DEBUG"


# ---------------------------------------------------------------------------------- env


@pytest.mark.parametrize(("word", "value"), [
    ("true", True), ("false", False), ("1", True), ("0", False), ("yes", True), ("NO", False),
])
def test_env_overrides_booleans(word: str, value: bool) -> None:
    config = load_config(env={"KAA_KPC_TRANSPORTS_MQTT_TCP_ENABLED": word})
    assert config.kaa.kpc.transports.mqtt.tcp.enabled is value


def test_env_overrides_each_value_type(tmp_path: Path) -> None:
    env = {
        "KAA_KPC_TRANSPORTS_MQTT_TCP_PORT": "1999",                 # integer
        "SERVICE_GRACEFUL_SHUTDOWN": "250ms",                       # duration
        "KAA_KPC_AUTH_TOKEN_CACHE_NEGATIVE_TTL": "2.5",             # duration, plain seconds
        "KAA_KPC_TRANSPORTS_MQTT_TLS_CLIENT_AUTH": "require",       # choice
        "SERVICE_INSTANCE_REPLICA_ID": "replica-7",                 # string
        "KAA_KPC_TRANSPORTS_MQTT_WEBSOCKET_PATH": "/mqtt",          # string with a pattern
        "NATS_URLS": "nats://a:4222,nats://b:4222",
        "LICENSE_REQUIRED": "yes",
    }
    config = load_yaml(tmp_path, """
        service: {graceful-shutdown: 10}
        kaa.kpc.transports.mqtt.tcp.port: 1884
        nats: {urls: "nats://file:4222"}
    """, env)
    mqtt = config.kaa.kpc.transports.mqtt
    assert mqtt.tcp.port == 1999
    assert config.service.graceful_shutdown == 0.25
    assert config.kaa.kpc.auth.token_cache.negative_ttl == 2.5
    assert mqtt.tls.client_auth == "require"
    assert config.service.instance.replica.id == "replica-7"
    assert mqtt.websocket.path == "/mqtt"
    assert config.nats.urls == "nats://a:4222,nats://b:4222"
    assert config.license.required is True


def test_env_does_not_reach_into_named_maps(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "kaa: {extension-instances: {dcx: {endpoint-aware: false}}}",
                       env={"KAA_EXTENSION_INSTANCES_DCX_ENDPOINT_AWARE": "true"})
    assert config.kaa.extension_instances["dcx"].endpoint_aware is False


def test_env_value_error_names_key_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"KAA_KPC_TRANSPORTS_MQTT_TCP_PORT": "abc"})
    assert str(info.value) == (
        "kaa.kpc.transports.mqtt.tcp.port: expected an integer 0..65535, got 'abc' "
        "(from env KAA_KPC_TRANSPORTS_MQTT_TCP_PORT)"
    )
    assert info.value.key_path == "kaa.kpc.transports.mqtt.tcp.port"


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "key_path", "problem"), [
    ("servce: {port: 1}", "servce", "unknown key"),
    ("kaa: {kpc: {transports: {mqtt: {tcp: {prot: 1}}}}}", "kaa.kpc.transports.mqtt.tcp.prot",
     "unknown key"),
    ("kaa.applications.app.versions.v1.allowed-extension-instance: [dcx]",
     "kaa.applications.app.versions.v1.allowed-extension-instance", "unknown key"),
    ("kaa.applications.app.version: {}", "kaa.applications.app.version", "unknown key"),
    ("kaa.extension-instances.dcx.endpoint_aware: true",
     "kaa.extension-instances.dcx.endpoint_aware", "unknown key"),
    ("server: {port: 70000}", "server.port", "expected an integer 0..65535, got 70000"),
    ("server: {port: '80x'}", "server.port", "expected an integer 0..65535, got '80x'"),
    ("server: {port: true}", "server.port", "expected an integer 0..65535, got True"),
    ("kaa.kpc.transports.mqtt.max-inflight: 0", "kaa.kpc.transports.mqtt.max-inflight",
     "expected an integer >= 1, got 0"),
    ("kaa.kpc.transports.mqtt.tls.client-auth: optional",
     "kaa.kpc.transports.mqtt.tls.client-auth", "expected one of none, request, require"),
    ("logging: {format: xml}", "logging.format", "expected one of kv, json, got 'xml'"),
    ("kaa.kpc.transports.mqtt.tcp.enabled: maybe", "kaa.kpc.transports.mqtt.tcp.enabled",
     "expected a boolean"),
    ("service.graceful-shutdown: 10x", "service.graceful-shutdown", "expected a duration >= 0"),
    ("service.graceful-shutdown: -1", "service.graceful-shutdown", "expected a duration >= 0"),
    ("kaa.kpc.auth.request-timeout: 0", "kaa.kpc.auth.request-timeout", "expected a duration > 0"),
    ("service.instance.name: 'kpc.a'", "service.instance.name",
     "expected a non-empty NATS subject token"),
    ("service.instance.name: 12", "service.instance.name", "expected a non-empty NATS subject"),
    ("kaa.kpc.transports.mqtt.websocket.path: ws", "kaa.kpc.transports.mqtt.websocket.path",
     "expected a URL path starting with '/'"),
    ("kaa.applications.app.versions.v1.allowed-extension-instances: dcx",
     "kaa.applications.app.versions.v1.allowed-extension-instances",
     "expected a list of strings, got 'dcx'"),
    ("kaa.applications: {'my app': {versions: {v1: {}}}}", "kaa.applications.my app",
     "'my app' is not a non-empty name without spaces, '.', '*', '>', '/', '+' or '#'"),
    ("kaa.applications.app.versions: {'v1/x': {}}", "kaa.applications.app.versions.v1/x",
     "'v1/x' is not a non-empty name"),
    ("kaa.applications.app.versions: {'v+1': {}}", "kaa.applications.app.versions.v+1",
     "'v+1' is not a non-empty name"),
    ("kaa.extension-instances: {'dc*x': {endpoint-aware: true}}", "kaa.extension-instances.dc*x",
     "'dc*x' is not a non-empty name"),
    ("kaa.extension-instances: {'t>x': }", "kaa.extension-instances.t>x",
     "'t>x' is not a non-empty name"),
    ("kaa.applications.app.versions.v1.allowed-extension-instances: [dcx, 'a b']",
     "kaa.applications.app.versions.v1.allowed-extension-instances",
     "'a b' is not a non-empty name"),
    ("kaa.extension-instances.dcx.endpoint-aware: sometimes",
     "kaa.extension-instances.dcx.endpoint-aware", "expected a boolean"),
    ("kaa: {kpc: 5}", "kaa.kpc", "expected a mapping of keys, got 5"),
    ("server: {1883: x}", "server.1883", "keys must be strings"),
])
def test_errors_name_the_full_key_path(tmp_path: Path, text: str, key_path: str,
                                       problem: str) -> None:
    error = config_error(tmp_path, text)
    assert str(error).startswith(f"{key_path}: {problem}")
    assert error.key_path == key_path
    assert str(tmp_path / "service-config.yml") in str(error)


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    error = config_error(tmp_path, "logging: {lvl: INFO}")
    assert str(error).endswith("known keys here: level, format, max-value-length, repeat-interval")


# ---------------------------------------------------------------------------------- cross-field


@pytest.mark.parametrize(("text", "missing"), [
    ("kaa.kpc.transports.mqtt.tls: {enabled: true}", "cert-file"),
    ("kaa.kpc.transports.mqtt.tls: {enabled: true, cert-file: c.pem}", "key-file"),
])
def test_tls_needs_certificate_and_key(tmp_path: Path, text: str, missing: str) -> None:
    error = config_error(tmp_path, text)
    assert error.key_path == f"kaa.kpc.transports.mqtt.tls.{missing}"
    assert "required when kaa.kpc.transports.mqtt.tls.enabled is true" in str(error)


def test_tls_enabled_from_env_is_checked_too() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"KAA_KPC_TRANSPORTS_MQTT_TLS_ENABLED": "true"})
    assert "env KAA_KPC_TRANSPORTS_MQTT_TLS_CERT_FILE" in str(info.value)


def test_enabled_listeners_need_distinct_ports(tmp_path: Path) -> None:
    error = config_error(tmp_path, "kaa.kpc.transports.mqtt.websocket: {enabled: true, port: 8080}")
    assert str(error).startswith("kaa.kpc.transports.mqtt.websocket.port: port 8080 is already "
                                 "used by management.port")


def test_disabled_listener_and_port_zero_never_clash(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        server.port: 0
        management.port: 0
        kaa.kpc.transports:
          mqtt.tcp.port: 0
          mqtt.websocket: {enabled: false, port: 8080}
          http: {enabled: true, port: 0}
    """)
    assert config.kaa.kpc.transports.http.port == 0


def test_application_version_under_two_applications(tmp_path: Path) -> None:
    error = config_error(tmp_path, """
        kaa:
          applications:
            first: {versions: {v1: {allowed-extension-instances: [dcx]}}}
            second: {versions: {v1: {allowed-extension-instances: [dcx]}}}
    """)
    assert error.key_path == "kaa.applications.second.versions.v1"
    assert "already listed under kaa.applications.first" in str(error)


# ---------------------------------------------------------------------------------- disconnection


FOLLOW_CLIENT = DisconnectPolicy(on_client_disconnect=True, idle_timeout=None)


def test_disconnect_defaults_follow_the_client(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "kaa.applications.app.versions.v1: {}")
    disconnect = config.kaa.applications["app"].disconnect
    assert (disconnect.on_client_disconnect, disconnect.idle.enabled,
            disconnect.idle.duration) == (True, False, 300.0)
    assert config.disconnect_policy("v1") == FOLLOW_CLIENT


def test_unknown_app_version_gets_the_default_policy(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa.applications.app:
          disconnect: {idle: {enabled: true}}
          versions: {v1: {}}
    """)
    assert config.disconnect_policy("v1") == DisconnectPolicy(True, 300.0)
    assert config.disconnect_policy("elsewhere") == FOLLOW_CLIENT


def test_idle_duration_counts_only_when_enabled(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa.applications.app:
          disconnect.idle: {enabled: false, duration: 10s}
          versions: {v1: {}}
    """)
    assert config.disconnect_policy("v1") == FOLLOW_CLIENT


def test_app_versions_inherit_and_override_each_key(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa.applications.app:
          disconnect:
            on-client-disconnect: false
            idle: {enabled: true, duration: 5m}
          versions:
            inherits: {}
            all-null:
              disconnect: {on-client-disconnect: null, idle: {enabled: null, duration: null}}
            shorter:
              disconnect.idle.duration: 30s
            follows-client:
              disconnect: {on-client-disconnect: true, idle.enabled: false}
            both:
              disconnect.on-client-disconnect: true
    """)
    policy = config.disconnect_policy
    assert policy("inherits") == DisconnectPolicy(on_client_disconnect=False, idle_timeout=300.0)
    assert policy("all-null") == policy("inherits")
    assert policy("shorter") == DisconnectPolicy(on_client_disconnect=False, idle_timeout=30.0)
    assert policy("follows-client") == FOLLOW_CLIENT
    assert policy("both") == DisconnectPolicy(on_client_disconnect=True, idle_timeout=300.0)
    override = config.kaa.applications["app"].versions["inherits"].disconnect
    assert (override.on_client_disconnect, override.idle.enabled, override.idle.duration) == (
        None, None, None)


def test_each_app_version_resolves_against_its_own_application(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa.applications:
          lorawan: {disconnect.idle.enabled: true, versions: {lora_v1: {}}}
          plain: {versions: {plain_v1: {}}}
    """)
    assert config.disconnect_policy("lora_v1") == DisconnectPolicy(True, 300.0)
    assert config.disconnect_policy("plain_v1") == FOLLOW_CLIENT


def test_documented_disconnection_example_loads(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa:
          applications:
            lorawan:
              disconnect:
                idle: {enabled: true, duration: 30m}
              versions:
                lorawan_v1: {}
                lorawan_v2:
                  disconnect: {on-client-disconnect: false}
    """)
    assert config.disconnect_policy("lorawan_v1") == DisconnectPolicy(True, 1800.0)
    assert config.disconnect_policy("lorawan_v2") == DisconnectPolicy(False, 1800.0)
    assert "lorawan_v2:\n          disconnect: {on-client-disconnect: false}" in DOC.read_text()


@pytest.mark.parametrize(("text", "blamed", "named"), [
    ("""
        kaa.applications.app:
          disconnect.on-client-disconnect: false
     """,
     "kaa.applications.app.disconnect.on-client-disconnect",
     "kaa.applications.app.disconnect.idle.enabled is false, so endpoints of application 'app'"),
    ("""
        kaa.applications.app:
          versions.v1.disconnect.on-client-disconnect: false
     """,
     "kaa.applications.app.versions.v1.disconnect.on-client-disconnect",
     "kaa.applications.app.disconnect.idle.enabled is false, so endpoints of application "
     "version 'v1'"),
    ("""
        kaa.applications.app:
          disconnect: {on-client-disconnect: false, idle.enabled: true}
          versions:
            v1: {}
            v2: {disconnect.idle.enabled: false}
     """,
     "kaa.applications.app.versions.v2.disconnect.idle.enabled",
     "kaa.applications.app.disconnect.on-client-disconnect is false and "
     "kaa.applications.app.versions.v2.disconnect.idle.enabled is false"),
    ("""
        kaa.applications.app:
          disconnect.idle.enabled: true
          versions.v1.disconnect: {on-client-disconnect: false, idle.enabled: false}
     """,
     "kaa.applications.app.versions.v1.disconnect.on-client-disconnect",
     "kaa.applications.app.versions.v1.disconnect.idle.enabled is false"),
])
def test_an_endpoint_must_be_able_to_go_offline(tmp_path: Path, text: str, blamed: str,
                                                named: str) -> None:
    error = config_error(tmp_path, text)
    assert error.key_path == blamed
    assert str(error).startswith(f"{blamed}: ")
    assert named in str(error)
    assert "enable idle disconnection or set on-client-disconnect to true" in str(error)
    assert str(tmp_path / "service-config.yml") in str(error)


@pytest.mark.parametrize(("text", "key_path", "problem"), [
    ("kaa.applications.app.disconnect.idle.duration: 0",
     "kaa.applications.app.disconnect.idle.duration", "expected a duration > 0"),
    ("kaa.applications.app.versions.v1.disconnect.idle.duration: 0",
     "kaa.applications.app.versions.v1.disconnect.idle.duration",
     "expected a duration > 0 (seconds, or a number with unit ms/s/m/h such as 10s), or null "
     "to inherit the application's value, got 0"),
    ("kaa.applications.app.versions.v1.disconnect.on-client-disconnect: perhaps",
     "kaa.applications.app.versions.v1.disconnect.on-client-disconnect", "expected a boolean"),
    ("kaa.applications.app.versions.v1.disconnect.idle-enabled: true",
     "kaa.applications.app.versions.v1.disconnect.idle-enabled", "unknown key"),
])
def test_disconnect_value_errors_name_the_key(tmp_path: Path, text: str, key_path: str,
                                              problem: str) -> None:
    error = config_error(tmp_path, text)
    assert str(error).startswith(f"{key_path}: {problem}")
    assert error.key_path == key_path


def test_disconnect_settings_take_no_env_overrides() -> None:
    config = load_config(env={"KAA_APPLICATIONS_APP_DISCONNECT_IDLE_ENABLED": "true"})
    assert config.kaa.applications == {}


# ---------------------------------------------------------------------------------- traffic report


def test_traffic_report_default_tenant(tmp_path: Path) -> None:
    assert load_config(env={}).kaa.kpc.traffic_report.default_tenant_id == "kaa"
    config = load_config(env={"KAA_KPC_TRAFFIC_REPORT_DEFAULT_TENANT_ID": "acme"})
    assert config.kaa.kpc.traffic_report.default_tenant_id == "acme"
    error = config_error(tmp_path, "kaa.kpc.traffic-report.default-tenant-id: ''")
    assert error.key_path == "kaa.kpc.traffic-report.default-tenant-id"
    assert "expected a non-empty tenant id without spaces" in str(error)


# ---------------------------------------------------------------------------------- ARCH example


def test_documented_architecture_example_loads(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa:
          applications:
            demo_application:                 # application name
              versions:
                demo_application_v1:          # application version name
                  allowed-extension-instances:
                    - dcx
                    - tsx
          extension-instances:
            dcx:
              endpoint-aware: true            # topic level 4 is an endpoint token
            tsx:                              # no flag => endpoint-unaware
    """)
    versions = config.kaa.applications["demo_application"].versions
    assert list(versions) == ["demo_application_v1"]
    assert versions["demo_application_v1"].allowed_extension_instances == ("dcx", "tsx")
    assert config.kaa.extension_instances == {
        "dcx": ExtensionInstance(endpoint_aware=True),
        "tsx": ExtensionInstance(endpoint_aware=False),
    }


# ---------------------------------------------------------------------------------- rendering


def test_effective_config_loads_back_to_the_same_config(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        service.instance.replica.id: r9
        kaa:
          kpc.transports.mqtt.tls: {enabled: true, cert-file: c.pem, key-file: k.pem}
          kpc.esp.message-timeout: 1500
          applications:
            app: {versions: {v1: {allowed-extension-instances: [dcx]}}}
          extension-instances: {dcx: {endpoint-aware: true}}
    """)
    rendered = render_effective_config(config)
    assert rendered.startswith(f"# kpc-trio effective configuration (source: {config.source})")
    again = load_config(write(tmp_path, rendered, "effective.yml"), env={})
    assert attrs.evolve(again, source=config.source) == config


def test_effective_config_keeps_inherited_disconnect_keys(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
        kaa.applications.app:
          disconnect: {on-client-disconnect: false, idle: {enabled: true, duration: 90s}}
          versions:
            v1: {disconnect.idle.duration: 10s}
            v2: {}
    """)
    again = load_config(write(tmp_path, render_effective_config(config), "effective.yml"), env={})
    assert attrs.evolve(again, source=config.source) == config
    assert again.disconnect_policy("v1") == DisconnectPolicy(False, 10.0)
    assert again.disconnect_policy("v2") == DisconnectPolicy(False, 90.0)


def test_effective_config_masks_nats_credentials() -> None:
    config = load_config(env={"NATS_URLS": "nats://kpc:s3cret@a:4222,nats://tok3n@b:4222"})
    rendered = render_effective_config(config)
    assert "s3cret" not in rendered and "tok3n" not in rendered
    assert yaml.safe_load(rendered)["nats"]["urls"] == "nats://kpc:***@a:4222,nats://***@b:4222"


def test_reference_has_a_row_for_every_scalar_key() -> None:
    def leaves(tree: dict, prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else key
            keys |= leaves(value, path) if isinstance(value, dict) and value else {path}
        return keys

    rows = {m[1] for m in re.finditer(r"^\| `([^`]+)` \|", config_reference(), re.MULTILINE)}
    effective = yaml.safe_load(render_effective_config(load_config(env={})))
    assert leaves(effective) <= rows
    app_version = "kaa.applications.<application>.versions.<appversion>"
    assert f"{app_version}.allowed-extension-instances" in rows
    tcp_enabled = ("| `kaa.kpc.transports.mqtt.tcp.enabled` | `true` "
                   "| `KAA_KPC_TRANSPORTS_MQTT_TCP_ENABLED` |")
    assert tcp_enabled in config_reference()


def test_configuration_doc_contains_the_current_reference() -> None:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- BEGIN config_reference\(\) -->\n(.*)<!-- END config_reference\(\) -->",
                      text, re.DOTALL)
    assert match, f"{DOC} lost its config_reference() markers"
    assert match[1] == config_reference(), (
        f"{DOC} is out of date: regenerate the table with\n  {REGENERATE}\n"
        "and paste it between the BEGIN/END config_reference() markers"
    )


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ("ftp://nats:4222", "the scheme must be nats:// or tls://"),
        ("nats://kpc:s3cret@nats:99999", "the port is not a number from 1 to 65535"),
        ("nats://nats:4222,nats://:4222", "names no host"),
    ],
)
def test_a_nats_url_that_cannot_be_dialled_is_refused_at_load_without_its_password(
    urls: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="nats.urls") as refused:
        load_config(None, env={"NATS_URLS": urls})
    assert problem in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_nats_urls_may_mix_plain_tls_and_bare_hosts() -> None:
    config = load_config(None, env={"NATS_URLS": "nats://a:4222, tls://b , c"})
    assert config.nats.urls == "nats://a:4222, tls://b , c"
