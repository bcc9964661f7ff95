"""Simulated extension service (4/ESP): records `ClientData` and answers requests.

By default it echoes: a request (non-null requestId) gets `ExtensionData` 200 carrying the request
payload back. `ExtensionBehaviour` makes it answer with another status or payload, slowly, or not
at all, for error-path and timeout tests.
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict

import attrs
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from kpc_trio.kaa import records, subjects
from kpc_trio.logs import get_logger
from kpc_trio.simulator.recording import RECORDING_LIMIT, Recording
from kpc_trio.simulator.service import Spawn, decode_message, now_ms

log = get_logger(__name__)


class ReplyPayload(enum.Enum):
    ECHO = "echo"  # the payload of the request being answered


@attrs.frozen
class ExtensionBehaviour:
    """How an extension answers; read once per ClientData, so a change applies to the next."""

    status_code: int = 200
    reason_phrase: str | None = None
    reply_payload: bytes | None | ReplyPayload = ReplyPayload.ECHO
    delay: float = 0.0
    silent: bool = False
    # 4/ESP lets an extension answer fire-and-forget data too (usually with an error, scenario S2).
    reply_without_request_id: bool = False
    # Answer with the replica subject as NATS replyTo (session affinity, RFC 3/4): KPC should
    # send that endpoint's next ClientData to `EchoExtension.replica_subject`.
    name_replica: bool = False


class EchoExtension:
    """One extension instance, subscribed in the queue group named after it."""

    def __init__(self, name: str, *, kpc_instance: str) -> None:
        self.name = name
        self.behaviour = ExtensionBehaviour()
        self.received: Recording[records.ClientData] = Recording(f"ClientData for {name!r}")
        # Replies go to replyTo (session affinity); without one, to the KPC instance subject.
        self._fallback_reply_to = subjects.extension_data_service(kpc_instance)
        # This simulated replica's own subjects (RFC 3: the last token names the type).
        self.replica_subject = f"kaa.v1.replica.{name}-replica-1.esp.ClientData"
        self._replica_reply_to = f"kaa.v1.replica.{name}-replica-1.esp.ExtensionData"
        #: correlation id -> the subject each ClientData arrived on (the newest, as `received`)
        self.arrived_on: OrderedDict[str, str] = OrderedDict()

    def reply_for(
        self, data: records.ClientData, behaviour: ExtensionBehaviour
    ) -> records.ExtensionData:
        payload = behaviour.reply_payload
        if payload is ReplyPayload.ECHO:
            payload = data.payload
        return records.ExtensionData(
            correlation_id=data.correlation_id,
            timestamp=now_ms(),
            timeout=0,
            app_version_name=data.app_version_name,
            extension_instance_name=self.name,
            endpoint_id=data.endpoint_id,
            resource_path=data.resource_path,
            request_id=data.request_id,
            payload=payload,
            status_code=behaviour.status_code,
            reason_phrase=behaviour.reason_phrase,
        )

    async def attach(self, nc: NatsClient, spawn: Spawn) -> None:
        async def on_client_data(msg: Msg) -> None:
            data = decode_message(records.ClientData, msg)
            if data is None:
                return
            # Read before recording: a test that saw this message may change the behaviour next.
            behaviour = self.behaviour
            self.arrived_on[data.correlation_id] = msg.subject
            if len(self.arrived_on) > RECORDING_LIMIT:
                self.arrived_on.popitem(last=False)
            self.received.append(data)
            log.info("sim_client_data_received", extension=self.name,
                     app_version=data.app_version_name, endpoint_id=data.endpoint_id,
                     resource_path=data.resource_path, request_id=data.request_id,
                     payload_bytes=len(data.payload), correlation_id=data.correlation_id)
            if behaviour.silent:
                return
            if data.request_id is not None or behaviour.reply_without_request_id:
                reply = self._reply(nc, msg.reply or self._fallback_reply_to, data, behaviour)
                if behaviour.delay:
                    spawn(reply)  # answers to other requests must not wait behind this one
                else:
                    await reply  # one loop iteration less per round trip (benchmarks measure it)

        await nc.subscribe(subjects.client_data(self.name), queue=self.name, cb=on_client_data)
        await nc.subscribe(self.replica_subject, cb=on_client_data)

    async def _reply(
        self, nc: NatsClient, reply_to: str, data: records.ClientData,
        behaviour: ExtensionBehaviour,
    ) -> None:
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        reply = self.reply_for(data, behaviour)
        await nc.publish(reply_to, records.encode(reply),
                         reply=self._replica_reply_to if behaviour.name_replica else "")
        log.info("sim_extension_data_replied", extension=self.name, subject=reply_to,
                 status=reply.status_code, endpoint_id=reply.endpoint_id,
                 resource_path=reply.resource_path, request_id=reply.request_id)
