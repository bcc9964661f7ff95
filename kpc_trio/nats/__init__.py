"""KPC's own NATS client: sans-IO protocol, trio connection and gateway, correlated requests,
and the bundled nats-server."""
