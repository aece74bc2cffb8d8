// The pub/sub scenarios of the proxy's real-client test, played by MQTT.js
// over TCP with MQTT 5 (tests only):
//
//   MQTTJS_TOKENS='{"CLIENT_ID": "TOKEN", ...}' node scenarios.js SCENARIO URL
//
// It plays SCENARIO (qos, retained, will, session) against the broker at
// URL (mqtt://host:port), each client presenting its token as password,
// and prints the transcript: one line per message received (topic, QoS,
// retain, payload and properties, in the Go test's format) or session
// flag. On any failure it prints "error MESSAGE" and exits 1.
'use strict';
const mqtt = require('mqtt');

const [scenario, url] = process.argv.slice(2);
const tokens = JSON.parse(process.env.MQTTJS_TOKENS || '{}');
const expiry = 300;

// describe formats a received PUBLISH as the Go test's describe does.
function describe(packet) {
  const props = packet.properties || {};
  const user = Object.entries(props.userProperties || {})
    .flatMap(([key, values]) => [].concat(values).map((value) => `${key}:${value}`))
    .join(' ');
  const field = (value) => (value === undefined ? '' : String(value));
  const format = props.payloadFormatIndicator === undefined ? '' : (props.payloadFormatIndicator ? '1' : '0');
  return [
    packet.topic, `q${packet.qos}`, `r${packet.retain}`, packet.payload.toString(),
    `user=${user}`, `expiry=${field(props.messageExpiryInterval)}`,
    `content=${field(props.contentType)}`, `response=${field(props.responseTopic)}`,
    `correlation=${field(props.correlationData)}`, `format=${format}`,
  ].join('|');
}

// connect resolves to a connected client with its CONNACK and next(),
// which resolves to the next message received, described.
function connect(clientId, options = {}) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion: 5, clientId, username: `user-${clientId}`, password: tokens[clientId],
      clean: true, reconnectPeriod: 0, connectTimeout: 10000, ...options,
    });
    const queued = [];
    const waiting = [];
    client.on('message', (_topic, _payload, packet) => {
      const line = describe(packet);
      if (waiting.length > 0) waiting.shift()(line);
      else queued.push(line);
    });
    const next = () => (queued.length > 0 ? Promise.resolve(queued.shift()) : new Promise((r) => waiting.push(r)));
    client.once('connect', (connack) => resolve({ client, connack, next }));
    client.once('error', reject);
  });
}

// withProperties are the publish options carrying the properties the
// scenarios compare.
function withProperties(topic, options) {
  return {
    ...options,
    properties: {
      userProperties: { origin: ['scenario', 'twice'] },
      messageExpiryInterval: expiry,
      contentType: 'text/plain',
      responseTopic: `replies/${topic}`,
      correlationData: Buffer.from('corr-1'),
      payloadFormatIndicator: true,
    },
  };
}

const persistent = { clean: false, properties: { sessionExpiryInterval: expiry } };

const scenarios = {
  async qos() {
    const sub = await connect('qos-sub');
    await sub.client.subscribeAsync('qos/#', { qos: 2 });
    const pub = await connect('qos-pub');
    const transcript = [];
    for (const qos of [0, 1, 2]) {
      await pub.client.publishAsync(`qos/${qos}`, `hello ${qos}`, withProperties(`qos/${qos}`, { qos }));
      transcript.push(await sub.next());
    }
    await Promise.all([sub.client.endAsync(), pub.client.endAsync()]);
    return transcript;
  },
  async retained() {
    const pub = await connect('ret-pub');
    await pub.client.publishAsync('ret/1', 'kept', withProperties('ret/1', { qos: 1, retain: true }));
    const late = await connect('ret-late');
    await late.client.subscribeAsync('ret/#', { qos: 1 });
    const transcript = [await late.next()];
    await Promise.all([pub.client.endAsync(), late.client.endAsync()]);
    return transcript;
  },
  async will() {
    const watcher = await connect('will-watch');
    await watcher.client.subscribeAsync('will/#', { qos: 1 });
    const device = await connect('will-dev', {
      will: { topic: 'will/dev', payload: 'gone', qos: 1, retain: false, properties: { userProperties: { why: 'lost' } } },
    });
    await device.client.endAsync(true); // no DISCONNECT: the broker publishes the will
    const transcript = [await watcher.next()];
    await watcher.client.endAsync();
    return transcript;
  },
  async session() {
    const first = await connect('keeper', persistent);
    await first.client.subscribeAsync('queue/#', { qos: 1 });
    await first.client.endAsync();
    const pub = await connect('queue-pub');
    for (const i of [0, 1, 2]) {
      await pub.client.publishAsync('queue/1', `queued ${i}`, withProperties('queue/1', { qos: 1 }));
    }
    await pub.client.endAsync();
    const again = await connect('keeper', persistent);
    const transcript = [`session present ${again.connack.sessionPresent}`];
    for (let i = 0; i < 3; i++) transcript.push(await again.next());
    await again.client.endAsync();
    const clean = await connect('keeper');
    transcript.push(`after a clean start: session present ${clean.connack.sessionPresent}`);
    await clean.client.endAsync();
    return transcript;
  },
};

(async () => {
  if (!scenarios[scenario]) throw new Error(`unknown scenario ${scenario}`);
  for (const line of await scenarios[scenario]()) console.log(line);
  process.exit(0);
})().catch((err) => {
  console.log(`error ${err.message}`);
  process.exit(1);
});
