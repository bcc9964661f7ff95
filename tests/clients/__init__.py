"""Real MQTT clients driven from tests (paho-mqtt in its own network thread)."""
