"""1/KP topic grammar (spec 4.1-4.6).

A client publishes to `kp1/<appversion>/<extension>[/<token>]<resource-path>[/<request-id>]` (the
token level exists only for endpoint-aware extensions); KPC answers on that topic plus
`/status` (2xx) or `/error`, with a JSON body per 0001-error-response.schema.json for errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

import attrs

MAX_REQUEST_ID = 2**31 - 1  # ClientData.requestId is an Avro int
_MAX_REQUEST_ID_DIGITS = len(str(MAX_REQUEST_ID))
_AFTER_EXTENSION = 3  # levels 0-2 are kp1, appversion, extension; then token or resource path


@attrs.frozen
class Route:
    app_version: str
    extension: str
    token: str | None  # None for endpoint-unaware extensions
    resource_path: str  # "/json", "/config/json", or "" when nothing follows the token/extension
    request_id: int | None


class Kp1Error(Exception):
    """A request KPC itself refuses; the client learns why on `<request topic>/error`.

    `request_id` is set whenever the topic ends in one, even if the rest of it is bad: without it
    no answer is published (RFC 0001: "If Request ID is not present ... SHOULD NOT be published").
    """

    def __init__(
        self,
        status_code: int,
        reason_phrase: str,
        request_id: int | None = None,
        detail: str | None = None,  # for logs only; the client sees the reason phrase
    ) -> None:
        summary = f"{status_code} {reason_phrase}"
        super().__init__(f"{summary}: {detail}" if detail else summary)
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.request_id = request_id


class ApplicationRegistryError(ValueError):
    """The application mapping in the configuration is inconsistent."""


@attrs.frozen
class _AppVersion:
    app_name: str
    extensions: Mapping[str, bool]  # allowed extension instance -> endpoint-aware


@attrs.frozen
class ApplicationRegistry:
    """Which appversions exist, their application, and which extensions each may talk to."""

    _app_versions: Mapping[str, _AppVersion]

    @classmethod
    def from_mappings(
        cls,
        applications: Mapping[str, Mapping[str, Iterable[str]]],
        endpoint_aware: Mapping[str, bool],
    ) -> ApplicationRegistry:
        """`applications`: app name -> appversion name -> allowed extension instances;
        `endpoint_aware`: extension instance -> endpoint-aware (absent means unaware)."""
        app_versions: dict[str, _AppVersion] = {}
        for app_name, versions in applications.items():
            for app_version, extensions in versions.items():
                if app_version in app_versions:
                    raise ApplicationRegistryError(
                        f"appversion {app_version!r} is declared by applications "
                        f"{app_versions[app_version].app_name!r} and {app_name!r}; appversion "
                        "names appear alone in 1/KP topics, so each must belong to one application"
                    )
                app_versions[app_version] = _AppVersion(
                    app_name=app_name,
                    extensions={ext: endpoint_aware.get(ext, False) for ext in extensions},
                )
        return cls(app_versions)

    def app_name(self, app_version: str) -> str | None:
        entry = self._app_versions.get(app_version)
        return entry.app_name if entry is not None else None

    def extensions(self, app_version: str) -> Mapping[str, bool] | None:
        """Allowed extension instances of `app_version` -> endpoint-aware; None if unknown."""
        entry = self._app_versions.get(app_version)
        return entry.extensions if entry is not None else None


def _request_id(level: str) -> int | None:
    # Canonical decimal only: a leading zero would not survive the round trip into the response
    # topic (`/007` would be answered on `/7/status`), so such a level stays in the path.
    if (
        not level.isascii()
        or not level.isdigit()
        or len(level) > _MAX_REQUEST_ID_DIGITS
        or (level[0] == "0" and len(level) > 1)
    ):
        return None
    number = int(level)
    return number if number <= MAX_REQUEST_ID else None


def trailing_request_id(topic: str) -> int | None:
    """The request id `topic` ends in, if any, without parsing the rest (to answer a topic
    refused before parsing, e.g. for its length)."""
    if topic.count("/") < _AFTER_EXTENSION:
        return None
    return _request_id(topic.rpartition("/")[2])


def parse_topic(topic: str, registry: ApplicationRegistry) -> Route:
    """Route a client PUBLISH topic; raises Kp1Error with the answer KPC owes the client."""
    levels = topic.split("/")
    last = len(levels) - 1
    # The request id can never be the extension level or anything before it.
    request_id = _request_id(levels[last]) if last >= _AFTER_EXTENSION else None
    if last < 2 or levels[0] != "kp1" or not levels[1] or not levels[2]:
        raise Kp1Error(
            400,
            "Bad resource path",
            request_id,
            f"expected kp1/<appversion>/<extension>/...: {topic!r}",
        )
    app_version, extension = levels[1], levels[2]
    extensions = registry.extensions(app_version)
    if extensions is None:
        raise Kp1Error(
            404, "Application version not found", request_id, f"unknown appversion {app_version!r}"
        )
    endpoint_aware = extensions.get(extension)
    if endpoint_aware is None:
        raise Kp1Error(
            403,
            "Extension not allowed",
            request_id,
            f"extension {extension!r} is not allowed for appversion {app_version!r}",
        )
    token: str | None = None
    first_resource = _AFTER_EXTENSION
    if endpoint_aware:
        if last == _AFTER_EXTENSION:
            request_id = None  # the token level is never a request id
        token = levels[_AFTER_EXTENSION] if last >= _AFTER_EXTENSION else ""
        if not token or "." in token:
            raise Kp1Error(
                400,
                "Invalid endpoint token",
                request_id,
                f"extension {extension!r} is endpoint-aware: level 3 must be a token without "
                f"'.', got {token!r}",
            )
        first_resource += 1
    resource = levels[first_resource : last if request_id is not None else None]
    return Route(
        app_version=app_version,
        extension=extension,
        token=token,
        resource_path="/" + "/".join(resource) if resource else "",
        request_id=request_id,
    )


def response_topic(
    app_version: str,
    extension: str,
    token: str | None,
    resource_path: str,
    request_id: int | None,
    *,
    success: bool,
) -> str:
    """The topic answering (or pushing) to a client: `.../status` on success, `.../error` else."""
    parts = ["kp1/", app_version, "/", extension]
    if token is not None:
        parts += ("/", token)
    if resource_path:
        # Extensions should send "/json"; tolerate "json" rather than gluing it to the token.
        parts += (resource_path,) if resource_path[0] == "/" else ("/", resource_path)
    if request_id is not None:
        parts += ("/", str(request_id))
    parts.append("/status" if success else "/error")
    return "".join(parts)


def error_payload(status_code: int, reason_phrase: str) -> bytes:
    """Compact 1/KP error JSON (0001-error-response.schema.json)."""
    return json.dumps(
        {"statusCode": status_code, "reasonPhrase": reason_phrase}, separators=(",", ":")
    ).encode()


def is_success(status_code: int) -> bool:
    return 200 <= status_code < 300
