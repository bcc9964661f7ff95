"""Service access tokens from Keycloak (OAuth2 client credentials) for KPC's calls to Tekton.

One cached token, fetched with `grant_type=client_credentials` (client id and secret as form
fields, as Kaa's service-account examples do) and renewed when less than
max(refresh-skew, 10 % of its lifetime) remains, or at once after Tekton answered 401. Refresh
tokens are never used: renewing needs the secret anyway. Concurrent callers share one fetch.
The secret is never logged.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

import attrs
import trio

from kpc_trio.config import OAuth2Settings
from kpc_trio.http_client import HttpClientError, http_request
from kpc_trio.logs import get_logger

log = get_logger(__name__)


class TokenError(Exception):
    """No access token could be obtained; the message says what to fix."""


@attrs.define
class _Token:
    value: str
    renew_at: float  # trio time


def client_secret(settings: OAuth2Settings) -> str:
    """`client-secret`, or the content of `client-secret-file` (a mounted K8s secret), read at
    each token request so a rotated secret is picked up."""
    if settings.client_secret_file:
        try:
            with open(settings.client_secret_file, encoding="utf-8") as stream:
                return stream.read().strip()
        except OSError as exc:
            raise TokenError(f"kaa.oauth2.client-secret-file: cannot read "
                             f"{settings.client_secret_file}: {exc.strerror}") from None
    return settings.client_secret


class ServiceTokens:
    """The bearer token for Tekton, or none when `kaa.oauth2.enabled` is false."""

    def __init__(self, settings: OAuth2Settings, *, request_timeout: float) -> None:
        self._settings = settings
        self._timeout = request_timeout
        self._token: _Token | None = None
        self._fetching: trio.Event | None = None
        self._last_error: TokenError | None = None

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    async def authorization(self) -> list[tuple[str, str]]:
        """Headers to add to a Tekton request; raises TokenError."""
        if not self._settings.enabled:
            return []
        token = self._token
        if token is None or trio.current_time() >= token.renew_at:
            token = await self._renew()
        return [("authorization", f"Bearer {token.value}")]

    def invalidate(self) -> None:
        """Tekton answered 401: the next request fetches a new token."""
        self._token = None

    async def _renew(self) -> _Token:
        if self._fetching is not None:  # single flight: wait for the fetch under way
            await self._fetching.wait()
            if self._token is None:
                raise self._last_error or TokenError("token request failed")
            return self._token
        self._fetching = fetching = trio.Event()
        try:
            self._token = await self._fetch()
            self._last_error = None
            return self._token
        except TokenError as exc:
            self._token, self._last_error = None, exc
            raise
        finally:
            self._fetching = None
            fetching.set()

    async def _fetch(self) -> _Token:
        settings = self._settings
        form = urlencode({"grant_type": "client_credentials", "client_id": settings.client_id,
                          "client_secret": client_secret(settings)}).encode()
        try:
            response = await http_request(
                "POST", settings.token_url, body=form, timeout=self._timeout,
                max_body_bytes=256 * 1024,
                headers=[("content-type", "application/x-www-form-urlencoded"),
                         ("accept", "application/json")])
        except HttpClientError as exc:
            raise TokenError(f"Keycloak token endpoint kaa.oauth2.token-url unreachable: "
                             f"{exc}") from None
        document = _json_object(response.body)
        if response.status != 200:
            error = document.get("error_description") or document.get("error") or ""
            hint = (" (check kaa.oauth2.client-id and the client secret)"
                    if response.status in (400, 401) else "")
            raise TokenError(f"Keycloak refused client {settings.client_id!r}: HTTP "
                             f"{response.status} {error}{hint}".rstrip())
        value, lifetime = document.get("access_token"), document.get("expires_in", 60)
        if not isinstance(value, str) or not value:
            raise TokenError("Keycloak answered 200 without an access_token")
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = 60
        margin = max(settings.refresh_skew, 0.1 * lifetime)
        renew_in = max(lifetime - margin, min(lifetime, 1.0))
        log.info("service_token_obtained", client_id=settings.client_id,
                 expires_in=lifetime, renew_in=round(renew_in, 1))
        return _Token(value, trio.current_time() + renew_in)


def _json_object(body: bytes) -> dict[str, object]:
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
