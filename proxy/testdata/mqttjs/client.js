// An MQTT.js client for the proxy's WebSocket tests (tests only).
//
//   node client.js URL PROTOCOL_VERSION TOKEN TOPIC [CA_FILE]
//
// It connects to URL (ws:// or wss://, trusting CA_FILE) with TOKEN as the
// password (none when TOKEN is "-"), subscribes to TOPIC/in and prints
// "ready"; for each message it gets there it prints "got PAYLOAD" and
// publishes "echo PAYLOAD" to TOPIC/out. It prints "error MESSAGE" and
// exits 2 when the connection fails or is refused, and ends cleanly when
// its standard input closes.
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [url, protocolVersion, token, topic, caFile] = process.argv.slice(2);
const options = {
  protocolVersion: Number(protocolVersion),
  clientId: `mqttjs-${protocolVersion}-${process.pid}`,
  username: 'browser',
  reconnectPeriod: 0,
  connectTimeout: 10000,
};
if (token !== '-') options.password = token;
if (caFile) options.ca = fs.readFileSync(caFile);

function fail(err) {
  console.log(`error ${err.message}`);
  process.exit(2);
}

const client = mqtt.connect(url, options);
client.on('error', fail);
client.on('connect', () => {
  client.subscribe(`${topic}/in`, { qos: 1 }, (err) => {
    if (err) fail(err);
    console.log('ready');
  });
});
client.on('message', (_topic, payload) => {
  console.log(`got ${payload}`);
  client.publish(`${topic}/out`, `echo ${payload}`, { qos: 1 });
});
process.stdin.resume();
process.stdin.on('end', () => client.end(false, () => process.exit(0)));
