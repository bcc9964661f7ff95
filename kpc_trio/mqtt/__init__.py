"""Sans-IO MQTT 3.1/3.1.1 server core: no trio, no asyncio, bytes in and events out."""
