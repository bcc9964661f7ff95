"""How Tekton's REST answers are read: GUESSWORK, kept in this one module on purpose.

No reachable Kaa documentation shows the response bodies of Tekton's REST API v1 or the JSON
schema of KPC's configuration in Tekton (kpc-tekton.md, T.9). What is known: the paths
(`/applications`, `/applications/{app}/app-versions`, `/app-configs/applications/{app}` and
`.../app-versions/{v}`, each with `serviceInstanceName`), that a configuration is a raw JSON
document, that 404 means "missing or not allowed", and that the Kaa 1.0 -> 1.1 migration script
moved KPC's `kaa.applications.<app>.versions.<v>` subtree, i.e. `allowed-extension-instances`,
into the appversion-level configuration. Everything else here is a guess, written to accept
every plausible shape rather than one:

* a list is a JSON array, or an object wrapping one under `content`, `items`, `data`, `results`,
  `applications`, `appVersions` or `versions`; its entries are names (strings) or objects with
  `name` (else `appName` / `appVersionName`);
* a configuration may come wrapped in `{"<instance>": {...}}` or `{"config": {...}}`; `null`,
  `{}` and 404 all mean "nothing at this level";
* the application-level ("Base") and appversion-level documents are merged deeply, the
  appversion winning, arrays replaced whole (Kaa: "it overrides the Base configuration");
* the endpoint-disconnection settings are read under any of the key spellings in
  `_ON_CLIENT_DISCONNECT` and `_IDLE` (the file's own names first), durations as seconds or
  `5m`-style strings.

To check against a real Tekton: `GET <url>/api/v1/applications` and
`GET <url>/api/v1/app-configs/applications/<app>/app-versions/<v>?serviceInstanceName=kpc` with
KPC's bearer token, and compare with these readers (tests/unit/test_tekton_adapter.py lists the
shapes accepted). A document that does not fit is logged (`tekton_document_unreadable`) with the
path, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from kpc_trio.applications import AppVersionSettings
from kpc_trio.config import Duration, InvalidValue
from kpc_trio.kaa.endpoints import DisconnectPolicy
from kpc_trio.logs import get_logger

log = get_logger(__name__)

_LIST_WRAPPERS: Final = ("content", "items", "data", "results", "applications", "appVersions",
                         "versions")
_NAME_KEYS: Final = ("name", "appName", "appVersionName")
_ALLOWED: Final = ("allowed-extension-instances", "allowedExtensionInstances")
_ON_CLIENT_DISCONNECT: Final = (
    ("disconnect", "on-client-disconnect"), ("disconnect-on-client-disconnection",),
    ("disconnectOnClientDisconnection",), ("endpoint-disconnection", "on-client-disconnection"),
)
_IDLE: Final = (
    ("disconnect", "idle"), ("disconnect-idle",), ("disconnectIdle",),
    ("endpoint-disconnection", "idle"),
)
_DURATION: Final = Duration(positive=True)
DEFAULT_IDLE_SECONDS: Final = 300.0


class UnreadableDocumentError(ValueError):
    """A Tekton answer that fits none of the shapes above."""


def names(document: object, what: str) -> list[str]:
    """The names in a list answer (`what` names it in errors)."""
    items = document
    if isinstance(document, dict):
        items = next((document[key] for key in _LIST_WRAPPERS
                      if isinstance(document.get(key), list)), None)
    if not isinstance(items, list):
        raise UnreadableDocumentError(f"{what}: expected a JSON array of names, got "
                                      f"{_shape(document)}")
    found = []
    for item in items:
        name = item if isinstance(item, str) else _name_of(item)
        if not name:
            raise UnreadableDocumentError(f"{what}: an entry without a name: {_shape(item)}")
        found.append(name)
    return found


def configuration(document: object, instance: str) -> dict[str, Any]:
    """KPC's configuration document at one level; {} when there is none."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise UnreadableDocumentError(f"expected a JSON object, got {_shape(document)}")
    for wrapper in (instance, "config", "configuration"):
        if set(document) == {wrapper} and isinstance(document[wrapper], dict):
            return document[wrapper]
    return document


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: objects recursively, everything else (arrays too) from `override`."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def app_version_settings(
    app_name: str, version: str, document: Mapping[str, Any], *,
    all_extensions: Iterable[str], allow_all_by_default: bool,
) -> AppVersionSettings:
    """The effective settings of one appversion from its merged configuration."""
    allowed = _first(document, [(key,) for key in _ALLOWED])
    if isinstance(allowed, list) and all(isinstance(item, str) for item in allowed):
        extensions = tuple(allowed)
    else:
        if allowed is not None:
            _unreadable(version, "allowed-extension-instances", allowed)
        extensions = tuple(all_extensions) if allow_all_by_default else ()
    return AppVersionSettings(app_name, extensions, _disconnect_policy(version, document))


def _disconnect_policy(version: str, document: Mapping[str, Any]) -> DisconnectPolicy:
    follow = _first(document, _ON_CLIENT_DISCONNECT)
    if not isinstance(follow, bool):
        if follow is not None:
            _unreadable(version, "on-client-disconnect", follow)
        follow = True
    idle = _first(document, _IDLE)
    timeout = None
    if isinstance(idle, Mapping) and idle.get("enabled") is True:
        try:
            timeout = _DURATION.parse(idle.get("duration", DEFAULT_IDLE_SECONDS))
        except InvalidValue:
            _unreadable(version, "idle.duration", idle.get("duration"))
            timeout = DEFAULT_IDLE_SECONDS
    elif idle is not None and not isinstance(idle, Mapping):
        _unreadable(version, "idle", idle)
    if not follow and timeout is None:
        # Endpoints that never go offline would leak: follow the client instead.
        log.warning("tekton_disconnect_settings_ignored", app_version=version,
                    reason="neither on-client-disconnect nor idle disconnection is enabled")
        follow = True
    return DisconnectPolicy(on_client_disconnect=follow, idle_timeout=timeout)


def _first(document: Mapping[str, Any], paths: Iterable[tuple[str, ...]]) -> Any:
    for path in paths:
        node: Any = document
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is not None:
            return node
    return None


def _name_of(item: object) -> str | None:
    if isinstance(item, dict):
        for key in _NAME_KEYS:
            if isinstance(item.get(key), str) and item[key]:
                return str(item[key])
    return None


def _unreadable(version: str, key: str, value: object) -> None:
    log.warning("tekton_document_unreadable", app_version=version, key=key,
                value=_shape(value), action="default used")


def _shape(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
