"""The whole system driven at random (issue 12): a hypothesis state machine whose rules are what
devices, extensions, CM/CCM and an outage do to a real `kpc-trio run` with a real nats-server and
the simulated Kaa side, and whose invariant is `SystemModel.settle()` (see kpc_model.py for what it
checks) after every step.

One KPC process and one nats-server serve the whole run; each example has its own endpoints,
tokens, credentials and client ids and leaves nothing behind (checked by its teardown).

By default a fixed, derandomized set of examples runs (a minute or two, part of the normal test
command). `KPC_MODEL_EXAMPLES=<n>` (and `KPC_MODEL_STEPS`) explore more, with random seeds.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.robustness.kpc_model import (
    AWARE_EXTENSIONS,
    UNAWARE_EXTENSION,
    Send,
    SystemModel,
    Target,
)
from tests.robustness.model_system import ModelSystem

EXPLORING = "KPC_MODEL_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("KPC_MODEL_EXAMPLES", "30"))
STEPS = int(os.environ.get("KPC_MODEL_STEPS", "30"))

# In one step, an endpoint is used by one device only: which connection holds it after would
# depend on the order KPC reads them in, which the model cannot know. This also keeps the model
# away from endpoint-aware replies following their endpoint to another connection (a strict xfail
# in test_model_regressions.py), which needs a request in flight while the endpoint moves.

REQUEST_IDS = st.none() | st.integers(0, 3)  # small: devices count from 0 and collide
QOS = st.integers(0, 2)


class KpcMachine(RuleBasedStateMachine):
    def __init__(self, system: ModelSystem) -> None:
        super().__init__()
        self.model = SystemModel(system)
        self._unique_request_ids = itertools.count(100)
        self.restarted = False

    def _token(self, data: st.DataObject,
               avoid: Callable[[str], bool] = lambda token: False) -> str | None:
        """A token to use, valid, revoked or rejected; None if `avoid` leaves none."""
        model = self.model
        tokens = [t for t in model.tokens if not avoid(t)]
        if not tokens:
            return None
        token = data.draw(st.sampled_from(tokens), label="token")
        return token

    def _client(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.model.devices)), label="client")

    @initialize(credentials=st.lists(st.none() | st.integers(0, 1), min_size=2, max_size=2))
    def two_devices(self, credentials: list[int | None]) -> None:
        """Examples start with devices, so that publishing is among the first steps."""
        for client_id, entry in zip(self.model.client_ids, credentials, strict=False):
            self.model.connect(client_id, entry)

    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        model = self.model
        client_id = data.draw(st.sampled_from(model.client_ids), label="client_id")
        credentials = data.draw(st.none() | st.integers(0, len(model.credentials) - 1),
                                label="credentials")
        wrong = credentials is not None and data.draw(st.booleans(), label="wrong_password")
        model.connect(client_id, credentials, wrong)

    def _target(self, data: st.DataObject,
                avoid: Callable[[str], bool] = lambda token: False) -> Target:
        """Mostly a valid route; sometimes one KPC must refuse (bad input between good)."""
        kind = data.draw(st.sampled_from(["aware", "unaware", "refused"]), label="target")
        token = self._token(data, avoid) if kind != "unaware" else None
        if kind == "refused":
            return data.draw(st.sampled_from([
                Target("dcx", token or "tok", "json", app_version="no_such_v1"),
                Target("not-allowed", None, "json")]), label="refused")
        if token is not None:
            return Target(data.draw(st.sampled_from(AWARE_EXTENSIONS), label="extension"),
                          token, "json")
        return Target(UNAWARE_EXTENSION, None,
                      data.draw(st.sampled_from(["time", "config"]), label="resource"))

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data(), count=st.integers(1, 4))
    def publish(self, data: st.DataObject, count: int) -> None:
        model = self.model
        sends: list[Send] = []
        for _ in range(count):
            client_id = self._client(data)

            def used_by_another(token: str, client_id: str = client_id) -> bool:
                """Two connections identifying one endpoint in one step: which one holds it
                after depends on the order KPC reads them in, which the model cannot know."""
                endpoint = model.endpoint_of(token)
                return endpoint is not None and any(
                    c != client_id and (other := model.endpoint_of(t.token or "")) is not None
                    and other.endpoint_id == endpoint.endpoint_id for c, t, _, _ in sends)

            target = self._target(data, used_by_another)
            request_id = data.draw(REQUEST_IDS, label="request_id")
            # One device never has two requests of one topic in flight: it could not tell
            # their answers apart either.
            if request_id is None or (client_id, target.topic, request_id) not in {
                    (c, t.topic, r) for c, t, _, r in sends}:
                sends.append((client_id, target, data.draw(QOS, label="qos"), request_id))
        model.publish(sends)

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data(), count=st.integers(1, 3), how=st.sampled_from(["close", "reset"]))
    def publish_and_leave(self, data: st.DataObject, count: int, how: str) -> None:
        """A device publishes and is gone before the answers come."""
        model = self.model
        client_id = self._client(data)
        device = model.devices[client_id]

        def held_elsewhere(token: str) -> bool:
            endpoint = model.endpoint_of(token)
            return endpoint is not None and model.holder.get(
                endpoint.endpoint_id, device) is not device

        sends: list[tuple[Target, int, int | None]] = []
        for _ in range(count):
            target = self._target(data, held_elsewhere)
            request_id = data.draw(REQUEST_IDS, label="request_id")
            if target.token and model.status[target.extension] != 200:
                request_id = None  # an error answer would not say whose it is
            if request_id is None or (target.topic, request_id) not in {
                    (t.topic, r) for t, _, r in sends}:
                sends.append((target, data.draw(QOS, label="qos"), request_id))
        model.publish_and_leave(client_id, sends, how)

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data(), qos=QOS)
    def subscribe(self, data: st.DataObject, qos: int) -> None:
        client_id = self._client(data)
        token = self._token(data) if data.draw(st.booleans(), label="with_token") else None
        self.model.subscribe(client_id, token, qos)

    @precondition(lambda self: self.model.devices)
    @rule(data=st.data(), how=st.sampled_from(["disconnect", "close", "reset"]))
    def disconnect(self, data: st.DataObject, how: str) -> None:
        self.model.disconnect(self._client(data), how)

    @rule(endpoint=st.none() | st.integers(0, 2), status=st.sampled_from([200, 200, 404]))
    def push(self, endpoint: int | None, status: int) -> None:
        self.model.push(endpoint, status)

    @rule(extension=st.sampled_from([*AWARE_EXTENSIONS, UNAWARE_EXTENSION]),
          status=st.sampled_from([200, 400, 500]))
    def extension_answers(self, extension: str, status: int) -> None:
        self.model.extension_answers(extension, status)

    @precondition(lambda self: len(self.model.revoked) < len(self.model.endpoints))
    @rule(data=st.data())
    def revoke_token(self, data: st.DataObject) -> None:
        model = self.model
        candidates = [n for n, e in enumerate(model.endpoints) if e.token not in model.revoked]
        model.revoke_token(data.draw(st.sampled_from(candidates), label="token"))

    @rule(credentials=st.integers(0, 1))
    def revoke_credentials(self, credentials: int) -> None:
        self.model.revoke_credentials(credentials)

    # A restart costs KPC's 2 s reconnect wait: one per example at most.
    @precondition(lambda self: not self.restarted)
    @rule(data=st.data(), count=st.integers(0, 3))
    def restart_nats(self, data: st.DataObject, count: int) -> None:
        """NATS restarts while devices publish what must wait for it: QoS 1/2 messages for
        endpoints they hold (KPC has their tokens cached), or for the unaware extension."""
        model = self.model
        self.restarted = True
        sends = []
        for _ in range(count if model.devices else 0):
            client_id = self._client(data)
            # Tokens of endpoints it holds: validated (cached), and nothing roams.
            tokens = sorted(model.devices[client_id].tokens.values())
            token = data.draw(st.none() | st.sampled_from(tokens) if tokens else st.none(),
                              label="token")
            target = (Target(UNAWARE_EXTENSION, None, "time") if token is None
                      else Target("dcx", token, "json"))
            request_id = data.draw(REQUEST_IDS, label="request_id")
            if request_id is not None:
                request_id = next(self._unique_request_ids)  # one request per topic in flight
            sends.append((client_id, target, data.draw(st.integers(1, 2), label="qos"),
                          request_id))
        model.restart_nats(sends)

    @invariant()
    def settled(self) -> None:
        self.model.settle()

    def teardown(self) -> None:
        self.model.teardown()


def test_the_system_does_what_the_model_predicts(model_system: ModelSystem) -> None:
    run_state_machine_as_test(
        lambda: KpcMachine(model_system),
        settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            derandomize=not EXPLORING, database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
