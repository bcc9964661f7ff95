"""The applications snapshot: built from the file, swapped whole, and what a swap changed."""

from __future__ import annotations

from pathlib import Path

from kpc_trio.applications import Applications, AppVersionSettings, LiveApplications
from kpc_trio.config import load_config
from kpc_trio.kaa.endpoints import DisconnectPolicy

CONFIG = """
kaa:
  applications:
    app:
      disconnect: {idle: {enabled: true, duration: 60}}
      versions:
        app-v1: {allowed-extension-instances: [dcx, tsx]}
  extension-instances:
    dcx: {endpoint-aware: true}
    tsx:
"""


def snapshot(**versions: AppVersionSettings) -> Applications:
    return Applications.build(versions, {"dcx": True}, "tekton")


def test_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(CONFIG)
    applications = Applications.from_config(load_config(str(path), env={}))
    assert applications.registry.app_name("app-v1") == "app"
    assert applications.registry.extensions("app-v1") == {"dcx": True, "tsx": False}
    assert applications.disconnect_policy("app-v1") == DisconnectPolicy(True, 60.0)
    assert applications.disconnect_policy("unknown") == DisconnectPolicy()


def test_a_swap_reports_added_removed_and_changed_appversions() -> None:
    v1 = AppVersionSettings("a", ("dcx",))
    live = LiveApplications(snapshot(**{"a-v1": v1, "a-v2": v1, "b-v1": AppVersionSettings(
        "b", ("dcx",))}))
    change = live.replace(snapshot(**{"a-v1": AppVersionSettings("a", ()), "a-v3": v1}))
    assert (change.added, change.removed, change.changed) == (
        {"a-v3"}, {"a-v2", "b-v1"}, {"a-v1"})
    assert change.removed_applications == {"b"}
    assert live.current.registry.extensions("a-v1") == {}
    assert not live.replace(live.current)
