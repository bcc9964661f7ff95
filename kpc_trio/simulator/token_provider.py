"""Simulated endpoint token provider (the CM service side of 16/ECAP `ep-token-request`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import attrs
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.simulator.recording import Recording
from kpc_trio.simulator.service import Spawn, decode_message, now_ms

log = get_logger(__name__)

INVALID_TOKEN_REASON = "Invalid endpoint token"


@attrs.frozen
class EndpointRecord:
    """One endpoint known to the provider: its token is valid within `app_name`."""

    app_name: str
    token: str
    endpoint_id: str
    token_id: str


class TokenProvider:
    """Answers token validation requests from a fixed endpoint table."""

    def __init__(
        self, name: str, endpoints: Iterable[EndpointRecord], *, invalid_token_status: int
    ) -> None:
        self.name = name
        self._endpoints = {(e.app_name, e.token): e for e in endpoints}
        self._invalid_token_status = invalid_token_status
        self.delay = 0.0
        self.requests: Recording[records.EndpointTokenValidationRequest] = Recording(
            f"token requests to {name!r}"
        )

    def revoke(self, app_name: str, token_ids: Iterable[str]) -> None:
        """Forget the tokens, as CM does before it broadcasts their revocation: validating them
        fails from now on. Rebinds the table, so the provider's thread never sees it mid-change."""
        revoked = set(token_ids)
        self._endpoints = {key: e for key, e in self._endpoints.items()
                           if not (e.app_name == app_name and e.token_id in revoked)}

    def answer(
        self, request: records.EndpointTokenValidationRequest
    ) -> records.EndpointTokenValidationResponse:
        endpoint = self._endpoints.get((request.app_name, request.token))
        if endpoint is None:
            return self._response(request, self._invalid_token_status, INVALID_TOKEN_REASON)
        return self._response(request, 200, "OK", endpoint)

    @staticmethod
    def _response(
        request: records.EndpointTokenValidationRequest, status: int, reason: str,
        endpoint: EndpointRecord | None = None,
    ) -> records.EndpointTokenValidationResponse:
        return records.EndpointTokenValidationResponse(
            correlation_id=request.correlation_id,  # KPC matches answers by it (spec 5.5)
            timestamp=now_ms(),
            timeout=0,
            token_id=endpoint.token_id if endpoint else None,
            endpoint_id=endpoint.endpoint_id if endpoint else None,
            status_code=status,
            reason_phrase=reason,
        )

    async def attach(self, nc: NatsClient, spawn: Spawn) -> None:
        async def on_request(msg: Msg) -> None:
            request = decode_message(records.EndpointTokenValidationRequest, msg)
            if request is None:
                return
            delay = self.delay  # read before recording, like the extension's behaviour
            self.requests.append(request)
            if msg.reply:
                spawn(self._reply(nc, msg.reply, request, delay))
            else:
                log.warning("sim_token_request_without_reply_to", provider=self.name,
                            correlation_id=request.correlation_id)

        await nc.subscribe(subjects.token_request(self.name), queue=self.name, cb=on_request)

    async def _reply(
        self, nc: NatsClient, reply_to: str, request: records.EndpointTokenValidationRequest,
        delay: float,
    ) -> None:
        await asyncio.sleep(delay)
        response = self.answer(request)
        await nc.publish(reply_to, records.encode(response))
        log.info("sim_token_validated", provider=self.name, app_name=request.app_name,
                 status=response.status_code, endpoint_id=response.endpoint_id,
                 correlation_id=request.correlation_id)
