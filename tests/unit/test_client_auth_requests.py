"""CorrelatedRequests (the request/reply matching client auth is built on) and the authenticator's
wiring, with a fake NATS port and trio's autojump clock: no I/O, timeouts take no real time."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from kpc_trio.client_auth import NatsClientAuthenticator
from kpc_trio.config import AuthSettings
from kpc_trio.kaa import records
from kpc_trio.nats.gateway import InboundMessage
from kpc_trio.nats.requests import (
    CorrelatedRequests,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from tests.fake_nats import FakeNats

REQUEST_SUBJECT = "kaa.v1.service.ccm.cap.basic-request"
REPLY_SUBJECT = "kaa.v1.replica.r1.cap.basic-response"


def make_requests(port: FakeNats, timeout: float = 5.0
                  ) -> CorrelatedRequests[records.ClientBasicAuthenticationResponse]:
    return CorrelatedRequests(port, reply_subject=REPLY_SUBJECT,
                              response_type=records.ClientBasicAuthenticationResponse,
                              timeout=timeout, correlation_prefix="r1-cap-basic")


def basic_request(correlation_id: str) -> records.ClientBasicAuthenticationRequest:
    return records.ClientBasicAuthenticationRequest(
        correlation_id=correlation_id, timestamp=1, timeout=5000, tenant_id="t", username="u",
        password="p")


def reply(correlation_id: str, status: int = 200) -> InboundMessage:
    response = records.ClientBasicAuthenticationResponse(
        correlation_id=correlation_id, timestamp=2, timeout=0, credentials_id=f"cred-{status}",
        client_id=None, status_code=status)
    return InboundMessage(REPLY_SUBJECT, "", records.encode(response))


def test_correlation_ids_are_unique_and_carry_the_prefix() -> None:
    requests = make_requests(FakeNats())
    ids = {requests.next_correlation_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("r1-cap-basic-") for i in ids)
    assert make_requests(FakeNats()).next_correlation_id() not in ids  # fresh random part


async def test_request_goes_out_with_the_reply_subject_and_returns_its_reply() -> None:
    port = FakeNats()
    requests = make_requests(port)
    send, receive = trio.open_memory_channel[InboundMessage](10)
    correlation_id = requests.next_correlation_id()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(requests.run_responses, receive)

        async def answer() -> None:
            await trio.testing.wait_all_tasks_blocked()
            [sent] = port.published
            assert (sent.subject, sent.reply) == (REQUEST_SUBJECT, REPLY_SUBJECT)
            assert records.decode(records.ClientBasicAuthenticationRequest,
                                  sent.payload).correlation_id == correlation_id
            await send.send(reply("someone-else", 500))  # unmatched: ignored
            await send.send(InboundMessage(REPLY_SUBJECT, "", b"\x01garbage"))  # counted
            await send.send(reply(correlation_id, 201))

        nursery.start_soon(answer)
        response = await requests.request(REQUEST_SUBJECT, basic_request(correlation_id))
        nursery.cancel_scope.cancel()
    assert (response.status_code, response.credentials_id) == (201, "cred-201")
    assert requests.undecodable == 1
    assert requests.pending == 0


async def test_no_reply_times_out_and_forgets_the_request(autojump_clock: trio.abc.Clock) -> None:
    requests = make_requests(FakeNats(), timeout=3.0)
    with pytest.raises(ProviderTimeoutError, match="is the provider running"):
        await requests.request(REQUEST_SUBJECT, basic_request(requests.next_correlation_id()))
    assert requests.pending == 0


async def test_cancelled_request_forgets_its_correlation_id(
    autojump_clock: trio.abc.Clock,
) -> None:
    requests = make_requests(FakeNats(), timeout=60.0)
    with trio.move_on_after(1.0):
        await requests.request(REQUEST_SUBJECT, basic_request(requests.next_correlation_id()))
    assert requests.pending == 0


@pytest.mark.parametrize("port", [FakeNats(connected=False), FakeNats(accepting=False)])
async def test_nats_not_taking_the_request_is_unavailable(port: FakeNats) -> None:
    requests = make_requests(port)
    with pytest.raises(ProviderUnavailableError):
        await requests.request(REQUEST_SUBJECT, basic_request(requests.next_correlation_id()))
    assert requests.pending == 0


async def test_reusing_a_waiting_correlation_id_is_refused(
    autojump_clock: trio.abc.Clock,
) -> None:
    requests = make_requests(FakeNats())
    correlation_id = requests.next_correlation_id()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(requests.request, REQUEST_SUBJECT, basic_request(correlation_id))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="already waiting"):
            await requests.request(REQUEST_SUBJECT, basic_request(correlation_id))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("protocol", "expected"), [
    ("cap", ["kaa.v1.replica.r7.cap.basic-response",
             "kaa.v1.replica.r7.cap.certificate-response"]),
    ("ecap", ["kaa.v1.replica.r7.ecap.client-username-password-response",
              "kaa.v1.replica.r7.ecap.client-certificate-response"]),
])
def test_authenticator_from_config_listens_on_the_replicas_reply_subjects(
    protocol: str, expected: list[str]
) -> None:
    settings = attrs.evolve(AuthSettings(), protocol=protocol, request_timeout=2.5)
    authenticator = NatsClientAuthenticator.from_config(FakeNats(), settings, replica_id="r7")
    assert [r.reply_subject for r in authenticator.replies] == expected
    assert {r.timeout for r in authenticator.replies} == {2.5}


def test_unknown_protocol_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'mqtt5' is not one of"):
        NatsClientAuthenticator(FakeNats(), protocol="mqtt5", provider="ccm", replica_id="r1",
                                request_timeout=1.0, anonymous_allowed=True)
