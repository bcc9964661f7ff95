"""Thin trio adapters for the transports: TCP, TLS, WebSocket."""
