"""ConfigReloader against a stand-in service: what is applied, refused or left for a restart."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import pytest
import trustme

from kpc_trio.config import Config, load_config
from kpc_trio.metrics import Metrics
from kpc_trio.reload import ConfigReloader
from kpc_trio.service import KpcService
from tests.integration.waiting import logged

BASE = """
kaa:
  kpc:
    transports:
      mqtt:
        tcp: {{port: {port}}}
        tls: {{enabled: true, cert-file: {cert}, key-file: {key}, client-auth: none}}
  applications:
    app: {{versions: {{app-v1: {{allowed-extension-instances: [dcx]}}}}}}
"""


@attrs.define
class StandIn:
    config: Config
    applied: list[tuple[frozenset[str], bool]] = attrs.field(factory=list)

    def apply_config(self, config: Config, changed: frozenset[str],
                     ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.applied.append((changed, ssl_context is not None))


def setup(tmp_path: Path) -> tuple[Path, StandIn, ConfigReloader]:
    leaf = trustme.CA().issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    path = tmp_path / "config.yml"
    write(path, tmp_path, port=1883)
    target = StandIn(load_config(str(path), env={}))
    return path, target, ConfigReloader(target, str(path), Metrics(), KpcService.tls_context)


def write(path: Path, directory: Path, *, port: int, extra: str = "") -> None:
    path.write_text(BASE.format(port=port, cert=directory / "c.pem", key=directory / "k.pem")
                    + extra)


def test_live_keys_apply_and_restart_keys_keep_their_running_value(tmp_path: Path) -> None:
    path, target, reloader = setup(tmp_path)
    replica_id = target.config.service.instance.replica.id
    write(path, tmp_path, port=1999, extra="logging: {level: DEBUG}\n")
    assert reloader.reload("sighup")
    assert target.applied == [(frozenset({"logging.level"}), True)]
    assert target.config.logging.level == "DEBUG"
    assert target.config.kaa.kpc.transports.mqtt.tcp.port == 1883  # needs a restart
    assert target.config.service.instance.replica.id == replica_id  # random, kept


def test_a_bad_tls_key_refuses_the_whole_file_naming_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path, target, reloader = setup(tmp_path)
    (tmp_path / "k.pem").write_text("not a key")
    write(path, tmp_path, port=1883, extra="logging: {level: DEBUG}\n")
    assert not reloader.reload("sighup")
    assert target.applied == []
    assert target.config.logging.level == "INFO"
    [refused] = logged(caplog, "config_reload_refused")
    assert refused["key_path"] == "kaa.kpc.transports.mqtt.tls.key-file"
    assert "holds no PEM private key" in str(refused["reason"])


def test_a_changed_file_is_noticed_by_its_fingerprint(tmp_path: Path) -> None:
    path, _, reloader = setup(tmp_path)
    before = reloader._current_fingerprint()
    assert reloader._current_fingerprint() == before
    write(path, tmp_path, port=1883, extra="# a comment\n")
    assert reloader._current_fingerprint() != before
