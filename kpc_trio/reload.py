"""Reloading the configuration file without a restart: on SIGHUP, and when the file changes.

A change is noticed by polling, every `service.config-watch-interval`, the fingerprint (inode,
mtime, size, content hash) of the file at APP_CONFIG_PATH and of the TLS files it names: a
Kubernetes ConfigMap or Secret update swaps a symlink (a new inode), cert-manager rewrites
the certificate. The new file is validated as a whole, TLS files included; a bad one is refused
(the log names the key path) and the running configuration stays. What can change live is
applied (`LIVE_KEYS`); keys that need a restart keep their running value and are named in the
log.
"""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
from collections.abc import Callable, Iterator
from typing import Final, Protocol

import attrs
import trio

from kpc_trio.config import Config, ConfigError, load_config, values_by_key, with_value
from kpc_trio.logs import get_logger
from kpc_trio.metrics import Metrics
from kpc_trio.net import TlsConfigError

log = get_logger(__name__)

_TLS = "kaa.kpc.transports.mqtt.tls"
_MQTT = "kaa.kpc.transports.mqtt"
#: Keys applied without a restart (key paths, or prefixes of them ending in ".").
LIVE_KEYS: Final = (
    "kaa.applications", "kaa.extension-instances",  # the applications snapshot is swapped
    "logging.level",
    f"{_TLS}.cert-file", f"{_TLS}.key-file", f"{_TLS}.ca-file", f"{_TLS}.client-auth",
    f"{_MQTT}.max-packet-size", f"{_MQTT}.connect-timeout", f"{_MQTT}.max-inflight",
    f"{_MQTT}.max-outbox-bytes", f"{_MQTT}.max-connections",
    f"{_MQTT}.max-publish-rate", f"{_MQTT}.max-receive-rate",  # for the sessions that follow
    "kaa.kpc.auth.anonymous-allowed",
    "service.graceful-shutdown", "service.config-watch-interval", "service.shutdown.",
)
_TLS_FILES: Final = ("cert-file", "key-file", "ca-file")


class ReloadTarget(Protocol):
    """The running service, as the reloader sees it."""

    config: Config

    def apply_config(self, config: Config, changed: frozenset[str],
                     ssl_context: ssl.SSLContext | None) -> None: ...


def is_live(key_path: str) -> bool:
    return key_path in LIVE_KEYS


@attrs.define
class ConfigReloader:
    """Reloads `target`'s configuration from `path`; `tls_context` builds the TLS context."""

    target: ReloadTarget
    path: str
    metrics: Metrics
    tls_context: Callable[[Config], ssl.SSLContext]
    _fingerprint: tuple[object, ...] = ()

    def __attrs_post_init__(self) -> None:
        self._fingerprint = self._current_fingerprint()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """SIGHUP and file changes trigger `reload()`; runs until cancelled."""
        with trio.open_signal_receiver(signal.SIGHUP) as signals:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_file)
                async for _ in signals:
                    log.info("signal_received", signal="SIGHUP", pid=os.getpid())
                    self.reload("sighup")

    async def _watch_file(self) -> None:
        while True:
            interval = self.target.config.service.config_watch_interval
            await trio.sleep(interval if interval > 0 else 60.0)
            if interval > 0 and self._current_fingerprint() != self._fingerprint:
                self.reload("file_changed")

    def reload(self, trigger: str) -> bool:
        """Re-read the file and apply it; False (logged, old configuration kept) if refused."""
        try:
            return self._reload(trigger)
        finally:  # what was read now is the reference for the next poll, good or bad
            self._fingerprint = self._current_fingerprint()

    def _reload(self, trigger: str) -> bool:
        old = self.target.config
        running = values_by_key(old)
        try:
            new = self._load(old)
            changed = frozenset(key for key, value in values_by_key(new).items()
                                if running[key] != value)
            ssl_context = self._tls_context(new)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("refused").inc()
            log.error("config_reload_refused", trigger=trigger, key_path=exc.key_path or None,
                      reason=str(exc), action="running configuration kept")
            return False
        restart = sorted(key for key in changed if not is_live(key))
        live = frozenset(key for key in changed if is_live(key))
        for key in restart:  # the running value stays until the restart
            new = with_value(new, key, running[key])
        if restart:
            log.warning("config_change_needs_restart", trigger=trigger, keys=",".join(restart))
        self.target.apply_config(new, live, ssl_context)
        result = "applied" if live or ssl_context is not None else "unchanged"
        self.metrics.config_reloads.labels(result).inc()
        log.info("config_reloaded", trigger=trigger, source=self.path,
                 applied=",".join(sorted(live)) or None,
                 tls_context="renewed" if ssl_context is not None else None)
        return True

    def _load(self, old: Config) -> Config:
        new = load_config(self.path)
        replica_id = new.service.instance.replica.id
        if replica_id != old.service.instance.replica.id \
                and load_config(self.path).service.instance.replica.id != replica_id:
            # Random on every load (no id configured): the running one is still the id.
            new = with_value(new, "service.instance.replica.id", old.service.instance.replica.id)
        return new

    def _tls_context(self, new: Config) -> ssl.SSLContext | None:
        """A new context whenever TLS serves: a rotation rewrites the files under the same
        names, so a reload re-reads them even when no key changed."""
        tls = new.kaa.kpc.transports.mqtt.tls
        if not tls.enabled:
            return None
        try:
            return self.tls_context(new)
        except TlsConfigError as exc:
            files = {name: getattr(tls, name.replace("-", "_")) for name in _TLS_FILES}
            key = next((f"{_TLS}.{name}" for name, path in files.items()
                        if path and path in str(exc)), _TLS)
            raise ConfigError(f"{key}: {exc}", key_path=key) from None

    def _current_fingerprint(self) -> tuple[object, ...]:
        return tuple(_file_fingerprint(path) for path in self._watched())

    def _watched(self) -> Iterator[str]:
        yield self.path
        tls = self.target.config.kaa.kpc.transports.mqtt.tls
        if tls.enabled:
            yield from (path for path in (tls.cert_file, tls.key_file, tls.ca_file) if path)


def _file_fingerprint(path: str) -> tuple[object, ...]:
    try:
        status = os.stat(path)  # follows the symlink a ConfigMap update swaps
        with open(path, "rb") as stream:
            digest = hashlib.sha256(stream.read()).hexdigest()
    except OSError as exc:
        return ("unreadable", exc.errno)
    return (status.st_ino, status.st_mtime_ns, status.st_size, digest)
