// One 1/KP request/response over MQTT.js, as a Node device does it.
// Usage: node mqtt_round_trip.mjs <ws-url> <request-topic> <payload>
// Prints one JSON line: {topic, payload, qos, granted} for the reply, or {error} (exit code 1).
import mqtt from "mqtt";

const [url, topic, payload] = process.argv.slice(2);
const REPLY_DEADLINE_MS = 15000;

function finish(result, code) {
  console.log(JSON.stringify(result));
  process.exit(code);
}

setTimeout(() => finish({ error: `no reply within ${REPLY_DEADLINE_MS} ms` }, 1),
  REPLY_DEADLINE_MS).unref();

// MQTT.js defaults to MQTT 3.1.1 (protocolVersion 4) and reconnects forever: a test wants the
// first error instead.
const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10000 });
client.on("error", (error) => finish({ error: String(error) }, 1));
client.on("close", () => finish({ error: "connection closed before the reply" }, 1));
let granted = null;
client.on("message", (replyTopic, message, packet) => {
  // Done: the DISCONNECT below may overtake MQTT.js's PUBACK for this QoS 1 reply, and the
  // server then closes before that PUBACK is written (EPIPE). Neither matters any more.
  client.removeAllListeners("close");
  client.removeAllListeners("error");
  client.on("error", () => {});
  client.end(false, () => finish(
    { topic: replyTopic, payload: message.toString(), qos: packet.qos, granted }, 0));
});
client.on("connect", async () => {
  try {
    // As the Kaa tutorials do; KPC delivers the reply with or without it.
    [{ qos: granted }] = await client.subscribeAsync(`${topic}/+`, { qos: 1 });
    await client.publishAsync(topic, payload, { qos: 1 });
  } catch (error) {
    finish({ error: String(error) }, 1);
  }
});
