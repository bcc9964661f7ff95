"""Side-by-side benchmarks of kpc_trio, mosquitto and amqtt: `python -m benchmarks.run`."""
