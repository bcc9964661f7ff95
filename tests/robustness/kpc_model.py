"""A model of the whole system: what devices, the simulated Kaa side and the operator must see.

`SystemModel` drives a running KPC (`model_system.ModelSystem`) through actions — devices that
connect, publish, subscribe and leave, extensions that push, CM/CCM revoking tokens and
credentials, NATS restarting — and after each one `settle()` waits for what the model predicts
and checks it:

* every acknowledged QoS >= 1 message reached its extension (and every relayed message was
  expected: with a valid token, the endpoint it belongs to);
* every request with a request id got exactly one `/status` (echoed payload) or `/error`, on the
  connection that sent it; a push reaches the connection holding its endpoint;
* no device receives a message the model did not predict for it (another endpoint's, another
  device's reply, a duplicate shows up at a later step);
* no connection closes but for the reason the model expects, as the service's
  `client_disconnected` log event says; no internal error is logged;
* `kpc_connections_open` and `kpc_endpoints_online` (from /metrics) and the connectivity events
  (the endpoints the simulated Kaa sees online) agree with the model; after `teardown()` all are 0.

The explicit action methods let regression tests replay a sequence the hypothesis machine found.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import attrs

from kpc_trio.kaa import records
from kpc_trio.simulator.credentials import BasicCredentials
from kpc_trio.simulator.extension import ExtensionBehaviour
from kpc_trio.simulator.kaa_side import SimulatedKaa
from kpc_trio.simulator.token_provider import EndpointRecord
from tests.integration.kpc_harness import APP, APP_VERSION, push_data
from tests.robustness.model_device import (
    PINGREQ_BYTES,
    Message,
    ModelDevice,
    connect_bytes,
    publish_bytes,
    subscribe_bytes,
    wait_readable,
)
from tests.robustness.model_system import ModelSystem

#: Deadline for what the model waits for; it only stops a hang, it measures nothing.
SETTLE_TIMEOUT = 10.0
POLL = 0.01  # select() timeout while waiting for the simulated Kaa side (another thread)
AWARE_EXTENSIONS = ("dcx", "cex")
UNAWARE_EXTENSION = "tsx"
PUSH_EXTENSION = "cex"
INVALID_TOKEN_STATUS = 401  # what the simulated token provider answers (and KPC passes on)
TENANT = "tenant-a"
PASSWORD = "model-secret"
#: Close reasons of `client_disconnected`, by what the device did (or what was done to it).
CLOSE_REASONS = {
    "disconnect": "client_disconnect",  # DISCONNECT, then close
    "close": "connection_closed",  # TCP close without DISCONNECT
    "reset": "connection_lost",  # TCP reset
    "takeover": "takeover",  # a newer connection with the same client id
    "credentials": "credentials_revoked",  # CCM revoked the credentials it connected with
    "refused": "refused_bad_username_or_password",  # CONNACK 4
}
_examples = itertools.count()


class ModelViolation(AssertionError):
    """The system did something the model does not allow."""


@attrs.frozen
class Expected:
    """A PUBLISH a device must receive: `payload` None stands for a 1/KP error body with
    `status` (any error status when None)."""

    topic: str
    payload: bytes | None
    what: str
    status: int | None = None


@attrs.frozen
class Relay:
    """A `ClientData` an extension must receive."""

    extension: str
    endpoint_id: str | None
    resource_path: str
    request_id: int | None
    what: str


@attrs.define(eq=False)
class DeviceState:
    conn: ModelDevice
    client_id: str
    credentials_id: str | None
    tokens: dict[str, str] = attrs.field(factory=dict)  # endpoint id -> token it is held with
    ever_held: set[tuple[str, str]] = attrs.field(factory=set)  # (endpoint id, token)
    awaiting_ack: dict[int, str] = attrs.field(factory=dict)
    expected: list[Expected] = attrs.field(factory=list)
    checked: int = 0  # messages of `conn` already matched


@attrs.frozen
class Target:
    """Where a PUBLISH goes: an endpoint-aware extension with a token, an unaware one, or a
    topic KPC must refuse (an unknown appversion, an extension not allowed)."""

    extension: str
    token: str | None
    resource: str
    app_version: str = APP_VERSION

    @property
    def topic(self) -> str:
        token = f"/{self.token}" if self.token is not None else ""
        return f"kp1/{self.app_version}/{self.extension}{token}/{self.resource}"

    @property
    def refusal(self) -> int | None:
        """The 1/KP error status KPC answers whatever the token (None: a valid route)."""
        if self.app_version != APP_VERSION:
            return 404
        if self.extension not in (*AWARE_EXTENSIONS, UNAWARE_EXTENSION):
            return 403
        return None


Send = tuple[str, Target, int, int | None]  # client id, target, QoS, request id


class SystemModel:
    """One example: its own endpoints, tokens and credentials (names unique per example, so
    examples share the KPC process and nats-server without seeing each other's state)."""

    def __init__(self, system: ModelSystem) -> None:
        self.system = system
        prefix = f"m{next(_examples)}"
        self.prefix = prefix
        # Endpoint 0 has two tokens: devices using either are one endpoint (roaming).
        self.endpoints = [
            EndpointRecord(app_name=APP, token=f"{prefix}-tok{n}", endpoint_id=f"{prefix}-ep{n}",
                           token_id=f"{prefix}-tid{n}") for n in range(3)]
        self.endpoints.append(EndpointRecord(app_name=APP, token=f"{prefix}-tok0b",
                                             endpoint_id=f"{prefix}-ep0",
                                             token_id=f"{prefix}-tid0b"))
        self.endpoint_ids = [f"{prefix}-ep{n}" for n in range(3)]
        self.rejected_tokens = [f"{prefix}-bad{n}" for n in range(2)]
        self.credentials = [
            BasicCredentials(username=f"{prefix}-user{n}", password=PASSWORD,
                             credentials_id=f"{prefix}-cred{n}", tenant_id=TENANT)
            for n in range(2)]
        self.client_ids = [f"{prefix}-c{n}" for n in range(4)]
        self.revoked: set[str] = set()  # tokens
        self.devices: dict[str, DeviceState] = {}  # live connections by client id
        # Connections ending in this step: the server closes them (takeover, revocation), or
        # the test did while the server still had something for them.
        self.leaving: list[DeviceState] = []
        self.holder: dict[str, DeviceState] = {}  # endpoint id -> connection that holds it
        self.relays: dict[bytes, Relay] = {}  # by payload (unique per message)
        # Sent by a device that left at once: may or may not be relayed, but at most once.
        self.maybe_relays: dict[bytes, Relay] = {}
        # Answers to such a device's requests: may reach the endpoint's holder (payload ->
        # endpoint id, topic after the token); answers to its unaware requests reach nobody.
        self.maybe_answers: dict[bytes, tuple[str, str]] = {}
        self.status = dict.fromkeys((*AWARE_EXTENSIONS, UNAWARE_EXTENSION), 200)
        self.received_count = dict.fromkeys((*AWARE_EXTENSIONS, UNAWARE_EXTENSION), 0)
        # (client id, acceptable reasons) of closes still to be logged
        self.closes: list[tuple[str, frozenset[str]]] = []
        self.log_waits: list[tuple[str, Callable[[dict[str, Any]], bool]]] = []
        self.history: list[str] = []
        self.failed = False  # a violation was found: teardown only cleans up
        self._sequence = itertools.count()
        self.kaa = SimulatedKaa(
            system.nats.url, endpoints=self.endpoints,
            echo_extensions=(*AWARE_EXTENSIONS, UNAWARE_EXTENSION),
            basic_credentials=self.credentials)
        self.kaa.start()

    # --- names ------------------------------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        return [e.token for e in self.endpoints] + self.rejected_tokens

    def endpoint_of(self, token: str) -> EndpointRecord | None:
        """The endpoint a token validates to now (None: rejected or revoked)."""
        if token in self.revoked:
            return None
        return next((e for e in self.endpoints if e.token == token), None)

    def _unique(self) -> bytes:
        return f"{self.prefix}-{next(self._sequence)}".encode()

    def _note(self, step: str) -> None:
        self.history.append(step)

    # --- actions ----------------------------------------------------------------------------
    def connect(self, client_id: str, credentials: int | None = None,
                wrong_password: bool = False) -> None:
        """A device connects, anonymously or with basic credentials `credentials` (index)."""
        self._note(f"connect({client_id!r}, credentials={credentials}, "
                   f"wrong_password={wrong_password})")
        username = password = None
        credentials_id = None
        if credentials is not None:
            entry = self.credentials[credentials]
            username, credentials_id = f"{entry.username}@{entry.tenant_id}", entry.credentials_id
            password = entry.password + ("-wrong" if wrong_password else "")
        conn = ModelDevice.open(client_id, self.system.mqtt_port)
        conn.send(connect_bytes(client_id, username, password))
        self._wait(lambda: conn.connack is not None or conn.closed_by_server,
                   f"CONNACK for {client_id}", [conn])
        if wrong_password:
            if conn.connack != 4:
                raise self._violation(f"{client_id}: wrong password got CONNACK {conn.connack}")
            self._wait(lambda: conn.closed_by_server, f"{client_id} closed after CONNACK 4",
                       [conn])
            conn.close(disconnect=False)
            self._expect_close(client_id, "refused")
            return
        if conn.connack != 0:
            raise self._violation(f"{client_id}: CONNACK {conn.connack}, expected 0")
        previous = self.devices.pop(client_id, None)
        if previous is not None:
            self._server_closes(previous, "takeover")
        self.devices[client_id] = DeviceState(conn, client_id, credentials_id)

    def publish(self, sends: list[Send]) -> list[tuple[DeviceState, bytes, str]]:
        """Devices publish (client id, target, QoS, request id), all sent before any answer is
        awaited: requests are in flight together. Returns (device, payload, what) of each."""
        sent = []
        for client_id, target, qos, request_id in sends:
            self._note(f"publish({client_id!r}, {target!r}, qos={qos}, request_id={request_id})")
            device = self.devices[client_id]
            topic, payload, what = self._send(device, target, qos, request_id, acknowledged=True)
            self._expect_outcome(device, target, topic, payload, request_id, what)
            sent.append((device, payload, what))
        return sent

    def publish_and_leave(self, client_id: str, sends: list[tuple[Target, int, int | None]],
                          how: str) -> None:
        """A device publishes and closes its connection at once (`close` or `reset`): what it
        sent may or may not be relayed, answers must not reach anyone but the endpoint's
        holder. Its tokens must not be of endpoints another connection holds (whether the
        endpoint roamed to the leaving connection first would be a race)."""
        self._note(f"publish_and_leave({client_id!r}, {sends!r}, {how!r})")
        device = self.devices[client_id]
        device.conn.pump()  # what arrived before is still checked; answers to `sends` are not
        self._check_messages(device)
        del self.devices[client_id]
        self.leaving.append(device)
        for target, qos, request_id in sends:
            topic, payload, what = self._send(device, target, qos, request_id,
                                              acknowledged=False)
            endpoint = self.endpoint_of(target.token) if target.token else None
            if target.refusal is None and (target.token is None or endpoint is not None):
                self.maybe_relays[payload] = Relay(
                    target.extension, endpoint.endpoint_id if endpoint else None,
                    "/" + target.resource, request_id, what)
                if endpoint is not None and request_id is not None and \
                        self.status[target.extension] == 200:
                    tail = f"{target.resource}/{request_id}/status"
                    self.maybe_answers[payload] = (endpoint.endpoint_id, tail)
        device.conn.close(disconnect=False, reset=how == "reset")
        self._release(device)
        # Closing with unread data (acknowledgements on their way) resets the connection.
        self.closes.append((client_id, frozenset({CLOSE_REASONS["close"],
                                                  CLOSE_REASONS["reset"]})))

    def _send(self, device: DeviceState, target: Target, qos: int, request_id: int | None,
              *, acknowledged: bool) -> tuple[str, bytes, str]:
        topic = target.topic if request_id is None else f"{target.topic}/{request_id}"
        payload = self._unique()
        packet_id = device.conn.next_packet_id() if qos else None
        what = f"{device.client_id} {topic} qos {qos} payload {payload!r}"
        if packet_id is not None and acknowledged:
            device.awaiting_ack[packet_id] = what
        device.conn.send(publish_bytes(topic, payload, qos, packet_id))
        return topic, payload, what

    def _expect_outcome(self, device: DeviceState, target: Target, topic: str,
                        payload: bytes, request_id: int | None, what: str) -> None:
        def error(status: int) -> None:
            if request_id is not None:
                device.expected.append(Expected(topic + "/error", None, what, status))

        if target.refusal is not None:
            error(target.refusal)
            return
        if target.token is None:  # endpoint-unaware: relayed without an endpoint
            endpoint_id = None
        else:
            endpoint = self.endpoint_of(target.token)
            if endpoint is None:
                error(INVALID_TOKEN_STATUS)
                return
            endpoint_id = endpoint.endpoint_id
            self._hold(device, endpoint.endpoint_id, target.token)
        self.relays[payload] = Relay(target.extension, endpoint_id,
                                     "/" + target.resource, request_id, what)
        status = self.status[target.extension]
        if status != 200:
            error(status)
        elif request_id is not None:
            device.expected.append(Expected(topic + "/status", payload, what))

    def extension_answers(self, extension: str, status: int, delay: float = 0.0) -> None:
        """The extension answers requests with `status` from now on (200: echoes them),
        `delay` seconds after it got them."""
        self._note(f"extension_answers({extension!r}, {status}, delay={delay})")
        self.status[extension] = status
        self.kaa.set_extension_behaviour(extension,
                                         ExtensionBehaviour(status_code=status, delay=delay))

    def wait_relayed(self) -> None:
        """Wait until the extensions got every message relayed so far (answers may still be
        on their way)."""
        self._note("wait_relayed()")
        self._wait(self._all_relayed, "relays", [d.conn for d in self.devices.values()])

    def _all_relayed(self) -> bool:
        self._check_relays()
        return not self.relays

    def subscribe(self, client_id: str, token: str | None, qos: int) -> None:
        """SUBSCRIBE to the pushes of `token`'s endpoint (identifying it, spec 6.1), or to
        `kp1/#` with no token."""
        self._note(f"subscribe({client_id!r}, {token!r}, qos={qos})")
        device = self.devices[client_id]
        topic_filter = f"kp1/{APP_VERSION}/{PUSH_EXTENSION}/{token}/#" if token else "kp1/#"
        packet_id = device.conn.next_packet_id()
        device.conn.send(subscribe_bytes(packet_id, topic_filter, qos))
        self._wait(lambda: packet_id in device.conn.subacks or device.conn.closed_by_server,
                   f"SUBACK of {client_id} for {topic_filter}", [device.conn])
        granted = device.conn.subacks.get(packet_id, b"")
        if len(granted) != 1 or granted[0] > qos:  # a lower QoS may be granted, not a failure
            raise self._violation(f"{client_id}: SUBACK {granted!r} for {topic_filter} at "
                                 f"QoS {qos}")
        endpoint = self.endpoint_of(token) if token is not None else None
        if endpoint is not None:
            assert token is not None
            self._hold(device, endpoint.endpoint_id, token)

    def disconnect(self, client_id: str, how: str) -> None:
        """The device leaves: `disconnect` (DISCONNECT first), `close` or `reset`."""
        self._note(f"disconnect({client_id!r}, {how!r})")
        device = self.devices.pop(client_id)
        device.conn.pump()  # what arrived before it left is still checked
        self._check_messages(device)
        device.conn.close(disconnect=how == "disconnect", reset=how == "reset")
        self._release(device)
        self._expect_close(client_id, how)

    def push(self, endpoint: int | None, status: int = 200) -> None:
        """The push extension sends data to an endpoint (`endpoint_ids` index): its holder gets
        it, nobody else; with no endpoint, nobody gets it."""
        self._note(f"push(endpoint={endpoint}, status={status})")
        endpoint_id = None if endpoint is None else self.endpoint_ids[endpoint]
        payload = self._unique()
        self.kaa.push(PUSH_EXTENSION, push_data(endpoint_id, "/command", payload,
                                                extension=PUSH_EXTENSION, status_code=status))
        device = self.holder.get(endpoint_id) if endpoint_id else None
        if device is not None:
            topic = f"kp1/{APP_VERSION}/{PUSH_EXTENSION}/{device.tokens[endpoint_id]}/command"
            what = f"push {payload!r} to {endpoint_id}"
            device.expected.append(Expected(topic + "/status", payload, what) if status == 200
                                   else Expected(topic + "/error", None, what, status))

    def revoke_token(self, token: int) -> None:
        """CM revokes a token (`endpoints` index): the endpoint's session ends if it uses that
        token, its connection stays."""
        self._note(f"revoke_token({token})")
        record = self.endpoints[token]
        self.revoked.add(record.token)
        self.kaa.revoke_tokens(APP, record.endpoint_id, [record.token_id])
        device = self.holder.get(record.endpoint_id)
        if device is not None and device.tokens.get(record.endpoint_id) == record.token:
            del self.holder[record.endpoint_id]
            del device.tokens[record.endpoint_id]
        self.log_waits.append((f"tokens_revoked for {record.endpoint_id}",
                               lambda e: e.get("event") == "tokens_revoked"
                               and e.get("endpoint_id") == record.endpoint_id))

    def revoke_credentials(self, credentials: int) -> None:
        """CCM revokes basic credentials: every connection made with them closes."""
        self._note(f"revoke_credentials({credentials})")
        credentials_id = self.credentials[credentials].credentials_id
        self.kaa.revoke_basic_credentials(TENANT, credentials_id)
        for client_id, device in list(self.devices.items()):
            if device.credentials_id == credentials_id:
                del self.devices[client_id]
                self._server_closes(device, "credentials")
        self.log_waits.append((f"credentials_revoked for {credentials_id}",
                               lambda e: e.get("event") == "credentials_revoked"
                               and e.get("credentials_id") == credentials_id))

    def restart_nats(self, sends: list[Send]) -> None:
        """Stop nats-server; once KPC noticed, devices publish `sends` (QoS 1/2, to endpoints
        whose token KPC has cached, or unaware: all must be relayed once NATS is back); start
        it again on its port and wait until both sides reconnected.

        Core NATS drops messages nobody is subscribed to, acknowledged or not: the extensions
        must be subscribed again before KPC publishes what waited. NATS starts again right
        after a failed reconnect attempt of KPC, which waits 2 s before the next one; the
        simulated Kaa side reconnects within 0.2 s. Should KPC still win that race (a loaded
        machine), what waited may be lost in NATS, and the model allows it."""
        self._note(f"restart_nats({sends!r})")
        nats = self.system.nats
        nats.stop()
        self.log_waits.append(("a failed reconnect attempt of KPC",
                               lambda e: e.get("event") == "nats_error"))
        self._wait(self._logged_all, "KPC tried to reconnect", [])
        sent = self.publish(sends)
        nats.start()
        self._wait(lambda: self.kaa.nats_connected, "the simulated Kaa side reconnected", [])
        self.kaa.sync()  # its subscriptions are back on the server
        subscribed = time.time()
        connected: list[float] = []

        def kpc_connected(event: dict[str, Any]) -> bool:
            if event.get("event") != "nats_connected":
                return False
            connected.append(event["ts"])
            return True

        self.log_waits.append(("KPC reconnected", kpc_connected))
        self._wait(self._logged_all, "KPC reconnected to NATS", [])
        if connected[0] < subscribed:
            for device, payload, what in sent:
                if payload in self.relays:
                    self.maybe_relays[payload] = self.relays.pop(payload)
                device.expected = [e for e in device.expected if e.what != what]

    def _logged_all(self) -> bool:
        self._check_log()
        return not self.log_waits

    # --- bookkeeping ------------------------------------------------------------------------
    def _hold(self, device: DeviceState, endpoint_id: str, token: str) -> None:
        """The last connection that identified an endpoint holds it (roaming)."""
        previous = self.holder.get(endpoint_id)
        if previous is not None and previous is not device:
            del previous.tokens[endpoint_id]
        self.holder[endpoint_id] = device
        device.tokens[endpoint_id] = token
        device.ever_held.add((endpoint_id, token))

    def _release(self, device: DeviceState) -> None:
        for endpoint_id in device.tokens:
            del self.holder[endpoint_id]
        device.tokens.clear()

    def _server_closes(self, device: DeviceState, why: str) -> None:
        self._release(device)
        self.leaving.append(device)
        self._expect_close(device.client_id, why)

    def _expect_close(self, client_id: str, why: str) -> None:
        self.closes.append((client_id, frozenset({CLOSE_REASONS[why]})))

    # --- invariants -------------------------------------------------------------------------
    def settle(self) -> None:
        """Wait until everything the model predicts happened, then check the exact counts."""
        live = list(self.devices.values())
        conns = [d.conn for d in live] + [d.conn for d in self.leaving]
        self._wait(lambda: self._settled(live), "the model's predictions", conns,
                   missing=lambda: self._missing(live))
        # A PINGRESP comes after KPC handled everything the device sent before: what a step
        # did to a connection (a failure included) shows in this step, not in a later one.
        pinged = {device: device.conn.pings_answered + 1 for device in live}
        for device in live:
            device.conn.send(PINGREQ_BYTES)
        self._wait(lambda: self._settled(live) and all(
            d.conn.pings_answered == n for d, n in pinged.items()), "PINGRESP", conns,
            missing=lambda: self._missing(live))
        for device in self.leaving:
            device.conn.close(disconnect=False)
        self.leaving.clear()
        self._check_gauges()

    def _settled(self, live: list[DeviceState]) -> bool:
        self._check_log()
        for device in live:
            self._check_messages(device)
            if device.conn.closed_by_server:
                raise self._violation(f"{device.client_id} was closed by the server; logged: "
                                     f"{self._logged_close(device.client_id)}")
        self._check_relays()
        return not self._missing(live)

    def _missing(self, live: list[DeviceState]) -> list[str]:
        missing = []
        for device in live:
            acked = device.conn.acknowledged
            missing += [f"acknowledgement of {what}" for packet_id, what
                        in device.awaiting_ack.items() if packet_id not in acked]
            missing += [f"{device.client_id} to receive {e.topic} ({e.what})"
                        for e in device.expected]
        missing += [f"{relay.extension} to receive {relay.what}"
                    for relay in self.relays.values()]
        missing += [f"{d.client_id} closed by the server" for d in self.leaving
                    if d.conn.live]
        missing += [f"close of {client_id} logged with reason {reason}"
                    for client_id, reason in self.closes]
        missing += [what for what, _ in self.log_waits]
        online = set(self.kaa.online_endpoints())
        if online != set(self.holder):
            missing.append(f"connectivity events to show {sorted(self.holder)} online, "
                           f"not {sorted(online)}")
        return missing

    def _check_messages(self, device: DeviceState) -> None:
        for packet_id in device.conn.acknowledged & device.awaiting_ack.keys():
            del device.awaiting_ack[packet_id]
        for message in device.conn.messages[device.checked:]:
            device.checked += 1
            expected = next((e for e in device.expected if _matches(e, message)), None)
            if expected is None and self._maybe_answer(device, message):
                continue
            if expected is None:
                raise self._violation(f"{device.client_id} received {message} that was not "
                                     f"for it; it expected {device.expected}")
            device.expected.remove(expected)

    def _maybe_answer(self, device: DeviceState, message: Message) -> bool:
        """An answer to a request of a device that left, reaching a holder of its endpoint."""
        endpoint_id, tail = self.maybe_answers.get(message.payload, ("", ""))
        if any(message.topic == f"kp1/{APP_VERSION}/{extension}/{token}/{tail}"
               for held, token in device.ever_held if held == endpoint_id
               for extension in AWARE_EXTENSIONS):
            del self.maybe_answers[message.payload]
            return True
        return False

    def _check_relays(self) -> None:
        for extension, seen in self.received_count.items():
            received = self.kaa.received(extension)
            for data in received[seen:]:
                relay = self.relays.pop(data.payload, None) or \
                    self.maybe_relays.pop(data.payload, None)
                if relay is None or (relay.extension, relay.endpoint_id, relay.resource_path,
                                     relay.request_id) != (extension, data.endpoint_id,
                                                           data.resource_path,
                                                           _device_request_id(relay, data)):
                    raise self._violation(f"{extension} received {_client_data(data)}; "
                                         f"the model expected {relay}")
            self.received_count[extension] = len(received)

    def _check_log(self) -> None:
        for event in self.system.log.new_events():
            if event.get("level") == "error" or "exc" in event:
                raise self._violation(f"KPC logged an internal error: {event}")
            if event.get("event") == "client_disconnected":
                self._check_close(event)
            for wait in list(self.log_waits):
                if wait[1](event):
                    self.log_waits.remove(wait)

    def _check_close(self, event: dict[str, Any]) -> None:
        client_id, reason = event.get("client_id"), event.get("reason")
        if client_id is not None and not client_id.startswith(f"{self.prefix}-"):
            return  # an earlier example's, closed after it failed
        for close in self.closes:
            # A refused CONNECT is logged before (or without) the client id being taken.
            if reason in close[1] and client_id in (close[0], None):
                self.closes.remove(close)
                return
        raise self._violation(f"connection of {client_id} closed with reason {reason!r}; "
                             f"the model expected only {self.closes}")

    def _logged_close(self, client_id: str) -> list[dict[str, Any]]:
        """The service's close events for `client_id`, waiting a little for the log line."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 2
        while not found and time.monotonic() < deadline:
            found = [e for e in self.system.log.new_events()
                     if e.get("client_id") == client_id or e.get("level") == "error"]
            time.sleep(POLL)
        return found

    def _check_gauges(self) -> None:
        open_connections = self.system.metric("kpc_connections_open", transport="tcp")
        if open_connections != len(self.devices):
            raise self._violation(f"kpc_connections_open is {open_connections}, the model has "
                                 f"{len(self.devices)} connections: {sorted(self.devices)}")
        online = self.system.metric("kpc_endpoints_online")
        if online != len(self.holder):
            raise self._violation(f"kpc_endpoints_online is {online}, the model has "
                                 f"{sorted(self.holder)} online")

    def _wait(self, condition: Callable[[], bool], what: str, conns: list[ModelDevice],
              missing: Callable[[], list[str]] | None = None) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            for conn in conns:
                conn.pump()
            if condition():
                return
            if time.monotonic() > deadline:
                detail = missing() if missing else []
                raise self._violation(f"never happened within {SETTLE_TIMEOUT}s: {what} "
                                     f"{detail}\nsteps: {self.history}")
            if any(conn.live for conn in conns):
                wait_readable(conns, POLL)
            else:
                time.sleep(POLL)

    def _violation(self, message: str) -> ModelViolation:
        self.failed = True
        steps = "\n  ".join(self.history)
        return ModelViolation(f"{message}\nsteps of {self.prefix}:\n  {steps}")

    def teardown(self) -> None:
        """Every device leaves cleanly; then nothing is left open or online."""
        try:
            if not self.failed:  # else the model no longer knows what to expect
                for client_id in list(self.devices):
                    self.disconnect(client_id, "disconnect")
                self.settle()  # the gauges are 0 now: the model has no connection left
        finally:
            self._close()

    def _close(self) -> None:
        """Release everything, also after a failure: the next example starts from nothing."""
        for device in [*self.devices.values(), *self.leaving]:
            device.conn.close(disconnect=False)
        self.kaa.close()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (self.system.metric("kpc_connections_open", transport="tcp")
               and time.monotonic() < deadline):
            time.sleep(POLL)
        if self.failed:
            self.system.log.new_events()  # what the failure left in the log was reported


def _matches(expected: Expected, message: Message) -> bool:
    if message.topic != expected.topic:
        return False
    if expected.payload is not None:
        return message.payload == expected.payload
    status = json.loads(message.payload).get("statusCode")
    return status == expected.status if expected.status else status >= 400


def _device_request_id(relay: Relay, data: records.ClientData) -> int | None:
    """The request id `data` stands for: an unaware extension sees one of KPC's, unique among
    all devices (issue 12), which maps back to the device's own."""
    if relay.endpoint_id is None and relay.request_id is not None \
            and data.request_id is not None:
        return relay.request_id
    return data.request_id


def _client_data(data: records.ClientData) -> str:
    return (f"ClientData(endpoint_id={data.endpoint_id!r}, resource_path={data.resource_path!r}, "
            f"request_id={data.request_id}, payload={data.payload!r})")

