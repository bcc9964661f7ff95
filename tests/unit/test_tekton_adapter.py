"""The shapes of Tekton answers kpc_trio accepts (guessed: see kpc_trio/tekton_adapter.py)."""

from __future__ import annotations

import pytest

from kpc_trio.applications import AppVersionSettings
from kpc_trio.kaa.endpoints import DisconnectPolicy
from kpc_trio.tekton_adapter import (
    UnreadableDocumentError,
    app_version_settings,
    configuration,
    merged,
    names,
)

EXTENSIONS = ("dcx", "epmx")


@pytest.mark.parametrize("document", [
    ["a", "b"],
    [{"name": "a", "tenantId": "t"}, {"name": "b"}],
    {"content": [{"name": "a"}, {"appName": "b"}], "totalElements": 2},
    {"items": ["a", "b"]},
    {"appVersions": [{"appVersionName": "a"}, "b"]},
], ids=["strings", "objects", "page", "items", "appVersions"])
def test_lists_of_names(document: object) -> None:
    assert names(document, "/applications") == ["a", "b"]


@pytest.mark.parametrize("document", [None, "a", {"count": 2}, [{"id": 7}], [""]])
def test_unreadable_lists_name_their_path(document: object) -> None:
    with pytest.raises(UnreadableDocumentError, match="/applications"):
        names(document, "/applications")


def test_configuration_documents_plain_wrapped_or_absent() -> None:
    plain = {"allowed-extension-instances": ["dcx"]}
    assert configuration(plain, "kpc") == plain
    assert configuration({"kpc": plain}, "kpc") == plain
    assert configuration({"config": plain}, "kpc") == plain
    assert configuration(None, "kpc") == {}
    with pytest.raises(UnreadableDocumentError):
        configuration(["dcx"], "kpc")


def test_appversion_values_win_in_a_deep_merge_and_arrays_are_replaced() -> None:
    base = {"allowed-extension-instances": ["dcx", "epmx"],
            "disconnect": {"idle": {"enabled": True, "duration": "10m"}}}
    version = {"allowed-extension-instances": ["dcx"], "disconnect": {"idle": {"duration": 60}}}
    assert merged(base, version) == {"allowed-extension-instances": ["dcx"],
                                     "disconnect": {"idle": {"enabled": True, "duration": 60}}}


def settings(document: dict[str, object], allow_all: bool = True) -> AppVersionSettings:
    return app_version_settings("app", "app-v1", document, all_extensions=EXTENSIONS,
                                allow_all_by_default=allow_all)


def test_allowed_extension_instances_and_the_default() -> None:
    assert settings({"allowedExtensionInstances": ["dcx"]}).allowed_extension_instances == (
        "dcx",)
    assert settings({}).allowed_extension_instances == EXTENSIONS
    assert settings({}, allow_all=False).allowed_extension_instances == ()
    assert settings({"allowed-extension-instances": "dcx"}).allowed_extension_instances == (
        EXTENSIONS)  # unreadable: logged, default used


@pytest.mark.parametrize(("document", "policy"), [
    ({}, DisconnectPolicy(True, None)),
    ({"disconnect": {"on-client-disconnect": False, "idle": {"enabled": True,
                                                             "duration": "5m"}}},
     DisconnectPolicy(False, 300.0)),
    ({"disconnect-idle": {"enabled": True, "duration": 90},
      "disconnect-on-client-disconnection": True}, DisconnectPolicy(True, 90.0)),
    ({"disconnectIdle": {"enabled": True}}, DisconnectPolicy(True, 300.0)),
    ({"disconnectOnClientDisconnection": False}, DisconnectPolicy(True, None)),  # never offline
    ({"disconnect-idle": {"enabled": True, "duration": "soon"}}, DisconnectPolicy(True, 300.0)),
], ids=["default", "file-names", "kebab", "camel-default-duration", "never-offline", "bad"])
def test_disconnection_settings_under_every_guessed_spelling(
    document: dict[str, object], policy: DisconnectPolicy,
) -> None:
    assert settings(document).disconnect == policy
