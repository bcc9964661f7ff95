"""The applications KPC serves, as one immutable snapshot replaced as a whole.

A snapshot comes from the YAML file (`kaa.applications`) or from Tekton (17/SCMP); either way
it names every appversion, its application, the extension instances its clients may address and
when its endpoints count as disconnected. Readers (sessions, the HTTP transport, the idle
tracker) only dereference the current snapshot, so a reload never makes them wait, and a
half-applied configuration cannot be observed: `LiveApplications.replace` swaps one reference.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping

import attrs

from kpc_trio.config import Config
from kpc_trio.kaa.endpoints import DisconnectPolicy
from kpc_trio.kaa.kp1 import ApplicationRegistry

_FOLLOW_CLIENT = DisconnectPolicy()


@attrs.frozen
class AppVersionSettings:
    """What KPC needs to know about one appversion."""

    app_name: str
    allowed_extension_instances: tuple[str, ...]
    disconnect: DisconnectPolicy = _FOLLOW_CLIENT


@attrs.frozen
class ApplicationsChange:
    """What a snapshot swap changed (appversion names; applications that disappeared whole)."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()
    removed_applications: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@attrs.frozen
class Applications:
    """Every appversion served, with the endpoint-aware flags of the extension instances."""

    versions: Mapping[str, AppVersionSettings]
    endpoint_aware: Mapping[str, bool]
    source: str  # "file" or "tekton": which configuration this snapshot came from
    registry: ApplicationRegistry = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Derived once per snapshot: sessions consult it on every message.
        by_application: dict[str, dict[str, tuple[str, ...]]] = {}
        for name, version in self.versions.items():
            by_application.setdefault(version.app_name, {})[name] = (
                version.allowed_extension_instances)
        object.__setattr__(self, "registry", ApplicationRegistry.from_mappings(
            by_application, self.endpoint_aware))

    @classmethod
    def build(cls, versions: Mapping[str, AppVersionSettings],
              endpoint_aware: Mapping[str, bool], source: str) -> Applications:
        return cls(types.MappingProxyType(dict(versions)),
                   types.MappingProxyType(dict(endpoint_aware)), source)

    @classmethod
    def from_config(cls, config: Config) -> Applications:
        """The file-based applications (`kaa.applications`)."""
        versions = {
            version_name: AppVersionSettings(
                app_name, version.allowed_extension_instances,
                config.disconnect_policy(version_name))
            for app_name, application in config.kaa.applications.items()
            for version_name, version in application.versions.items()
        }
        return cls.build(versions, endpoint_aware_of(config), "file")

    @property
    def application_names(self) -> frozenset[str]:
        return frozenset(version.app_name for version in self.versions.values())

    def disconnect_policy(self, app_version: str) -> DisconnectPolicy:
        """Unknown appversions follow their client's connection (the Kaa default)."""
        version = self.versions.get(app_version)
        return version.disconnect if version is not None else _FOLLOW_CLIENT

    def changes_to(self, newer: Applications) -> ApplicationsChange:
        old, new = self.versions, newer.versions
        changed = {name for name in old.keys() & new.keys() if old[name] != new[name]}
        if self.endpoint_aware != newer.endpoint_aware:
            changed |= old.keys() & new.keys()
        return ApplicationsChange(
            added=frozenset(new.keys() - old.keys()),
            removed=frozenset(old.keys() - new.keys()),
            changed=frozenset(changed),
            removed_applications=self.application_names - newer.application_names,
        )


def endpoint_aware_of(config: Config) -> dict[str, bool]:
    """`kaa.extension-instances`: always from the file, also when Tekton holds the applications
    (the official migration to Tekton leaves it out)."""
    return {name: bool(instance and instance.endpoint_aware)
            for name, instance in config.kaa.extension_instances.items()}


class LiveApplications:
    """The current snapshot; `replace` swaps it whole and says what changed."""

    def __init__(self, initial: Applications) -> None:
        self.current = initial

    def replace(self, newer: Applications) -> ApplicationsChange:
        change = self.current.changes_to(newer)
        self.current = newer
        return change

    def disconnect_policy(self, app_version: str) -> DisconnectPolicy:
        """For the idle tracker, which asks at each endpoint activity: new values apply then."""
        return self.current.disconnect_policy(app_version)


def describe(names: Iterable[str]) -> str:
    """A log field listing appversion names."""
    return ",".join(sorted(names))
