package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// pahoClient is a paho.golang MQTT 5 client connected to a broker,
// directly or through the proxy.
type pahoClient struct {
	*paho.Client
	local    string // the client's address
	connack  *paho.Connack
	received chan *paho.Publish // every PUBLISH it receives, in order
}

// connectPaho connects a paho client to addr with cp and fails the test if
// it is refused. It is disconnected at cleanup, unless it was before.
// edits, if any, change its configuration first.
func connectPaho(t *testing.T, addr string, cp *paho.Connect, edits ...func(*paho.ClientConfig)) *pahoClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, proxytest.DefaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	received := make(chan *paho.Publish, 100)
	cfg := paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(r paho.PublishReceived) (bool, error) {
			received <- r.Packet
			return true, nil
		}},
	}
	for _, edit := range edits {
		edit(&cfg)
	}
	client := paho.NewClient(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	connack, err := client.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		t.Fatalf("paho client %s connecting to %s: %v", cp.ClientID, addr, err)
	}
	t.Cleanup(func() { client.Disconnect(&paho.Disconnect{}) })
	return &pahoClient{Client: client, local: conn.LocalAddr().String(), connack: connack, received: received}
}

// next returns the next message the client received, or fails the test.
func (c *pahoClient) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case p := <-c.received:
		return p
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatalf("paho client %s received nothing within %v", c.ClientID(), proxytest.DefaultTimeout)
		return nil
	}
}

// subscribe subscribes to filter at qos or fails the test.
func (c *pahoClient) subscribe(t *testing.T, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	ack, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil || len(ack.Reasons) != 1 || ack.Reasons[0] != qos {
		t.Fatalf("subscribing to %s at QoS %d: %v (SUBACK %+v)", filter, qos, err, ack)
	}
}

// publish publishes p and fails the test unless it is acknowledged.
func (c *pahoClient) publish(t *testing.T, p *paho.Publish) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
	defer cancel()
	if _, err := c.Publish(ctx, p); err != nil {
		t.Fatalf("publishing to %s: %v", p.Topic, err)
	}
}

// pahoConnect is a CONNECT for client id carrying its token as password.
func pahoConnect(t *testing.T, id string) *paho.Connect {
	return &paho.Connect{
		ClientID:     id,
		CleanStart:   true,
		KeepAlive:    30,
		UsernameFlag: true,
		Username:     "user-" + id,
		PasswordFlag: true,
		Password:     []byte(mint(t, e2eSecret, id, nil)),
	}
}

// exchange is a legitimate client's visit: it connects through addr as
// id with token, subscribes to a topic of its own, publishes to it at QoS
// 1 and waits for the message to come back, then disconnects. It returns
// how long that took.
func exchange(t *testing.T, addr, id, token string) time.Duration {
	t.Helper()
	start := time.Now()
	cp := pahoConnect(t, id)
	cp.Password = []byte(token)
	c := connectPaho(t, addr, cp)
	topic := "legit/" + id
	c.subscribe(t, topic, 1)
	c.publish(t, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("ping")})
	if got := c.next(t); string(got.Payload) != "ping" {
		t.Errorf("legitimate client got %q on %s, want its own ping", got.Payload, got.Topic)
	}
	c.Disconnect(&paho.Disconnect{})
	return time.Since(start)
}

// sentExpiry is the message expiry interval the scenarios publish with.
const sentExpiry = 300

// expiryText shows a message expiry interval as received: the broker
// sends what remains of it, which is sentExpiry, or a second or two less
// when a second boundary passed between publish and delivery; either
// reads "~300" so that runs compare equal.
func expiryText(v uint32, present bool) string {
	switch {
	case !present:
		return ""
	case v <= sentExpiry && v >= sentExpiry-2:
		return "~" + strconv.Itoa(sentExpiry)
	default:
		return strconv.FormatUint(uint64(v), 10)
	}
}

// describe is a received message as a transcript line: topic, QoS,
// retain, payload and every MQTT 5 property a subscriber sees.
func describe(p *paho.Publish) string {
	line := fmt.Sprintf("%s|q%d|r%t|%s", p.Topic, p.QoS, p.Retain, p.Payload)
	if props := p.Properties; props != nil {
		var user []string
		for _, u := range props.User {
			user = append(user, u.Key+":"+u.Value)
		}
		expiry := uint32(0)
		if props.MessageExpiry != nil {
			expiry = *props.MessageExpiry
		}
		format := ""
		if props.PayloadFormat != nil {
			format = strconv.Itoa(int(*props.PayloadFormat))
		}
		line += fmt.Sprintf("|user=%s|expiry=%s|content=%s|response=%s|correlation=%s|format=%s",
			strings.Join(user, " "), expiryText(expiry, props.MessageExpiry != nil),
			props.ContentType, props.ResponseTopic, props.CorrelationData, format)
	}
	return line
}

// withProperties returns p carrying the MQTT 5 properties the scenarios
// compare.
func withProperties(p *paho.Publish) *paho.Publish {
	expiry, format := uint32(sentExpiry), byte(1)
	p.Properties = &paho.PublishProperties{
		User:            paho.UserProperties{{Key: "origin", Value: "scenario"}, {Key: "origin", Value: "twice"}},
		MessageExpiry:   &expiry,
		ContentType:     "text/plain",
		ResponseTopic:   "replies/" + p.Topic,
		CorrelationData: []byte("corr-1"),
		PayloadFormat:   &format,
	}
	return p
}

// scenario is a pub/sub exchange run once against a broker directly and
// once through the proxy; run returns its transcript, which must be the
// same both ways, and must hold lines lines.
type scenario struct {
	name  string
	lines int
	run   func(t *testing.T, addr string) []string
}

func pahoScenarios() []scenario {
	return []scenario{
		{name: "QoS 0, 1, 2 with properties", lines: 3, run: func(t *testing.T, addr string) []string {
			sub := connectPaho(t, addr, pahoConnect(t, "qos-sub"))
			sub.subscribe(t, "qos/#", 2)
			pub := connectPaho(t, addr, pahoConnect(t, "qos-pub"))
			var transcript []string
			for qos := range byte(3) {
				pub.publish(t, withProperties(&paho.Publish{Topic: fmt.Sprintf("qos/%d", qos), QoS: qos, Payload: fmt.Appendf(nil, "hello %d", qos)}))
				transcript = append(transcript, describe(sub.next(t)))
			}
			return transcript
		}},
		{name: "retained", lines: 1, run: func(t *testing.T, addr string) []string {
			pub := connectPaho(t, addr, pahoConnect(t, "ret-pub"))
			pub.publish(t, withProperties(&paho.Publish{Topic: "ret/1", QoS: 1, Retain: true, Payload: []byte("kept")}))
			late := connectPaho(t, addr, pahoConnect(t, "ret-late"))
			late.subscribe(t, "ret/#", 1)
			return []string{describe(late.next(t))}
		}},
		{name: "will on a lost connection", lines: 1, run: func(t *testing.T, addr string) []string {
			watcher := connectPaho(t, addr, pahoConnect(t, "will-watch"))
			watcher.subscribe(t, "will/#", 1)
			cp := pahoConnect(t, "will-dev")
			cp.WillMessage = &paho.WillMessage{Topic: "will/dev", QoS: 1, Payload: []byte("gone")}
			// paho writes no will property but the delay and user properties.
			cp.WillProperties = &paho.WillProperties{User: paho.UserProperties{{Key: "why", Value: "lost"}}}
			device := connectPaho(t, addr, cp)
			device.TerminateConnectionForTest() // no DISCONNECT: the broker publishes the will
			return []string{describe(watcher.next(t))}
		}},
		{name: "persistent session, queued messages, then a clean start", lines: 5, run: func(t *testing.T, addr string) []string {
			keep := func(cp *paho.Connect) *paho.Connect {
				expiry := uint32(sentExpiry)
				cp.CleanStart, cp.Properties = false, &paho.ConnectProperties{SessionExpiryInterval: &expiry}
				return cp
			}
			first := connectPaho(t, addr, keep(pahoConnect(t, "keeper")))
			first.subscribe(t, "queue/#", 1)
			first.Disconnect(&paho.Disconnect{})
			pub := connectPaho(t, addr, pahoConnect(t, "queue-pub"))
			for i := range 3 {
				pub.publish(t, withProperties(&paho.Publish{Topic: "queue/1", QoS: 1, Payload: fmt.Appendf(nil, "queued %d", i)}))
			}
			again := connectPaho(t, addr, keep(pahoConnect(t, "keeper")))
			transcript := []string{fmt.Sprintf("session present %t", again.connack.SessionPresent)}
			for range 3 {
				transcript = append(transcript, describe(again.next(t)))
			}
			again.Disconnect(&paho.Disconnect{})
			clean := connectPaho(t, addr, pahoConnect(t, "keeper"))
			return append(transcript, fmt.Sprintf("after a clean start: session present %t", clean.connack.SessionPresent))
		}},
	}
}

// mqttjsScenarios are the paho scenarios played by MQTT.js (MQTT 5 over
// TCP) with testdata/mqttjs/scenarios.js, whose transcripts have the same
// format.
func mqttjsScenarios(t *testing.T) []scenario {
	node := proxytest.RequireNodeModule(t, "testdata/mqttjs", "mqtt")
	play := func(name string, ids ...string) func(t *testing.T, addr string) []string {
		return func(t *testing.T, addr string) []string {
			tokens := make(map[string]string)
			for _, id := range ids {
				tokens[id] = mint(t, e2eSecret, id, nil)
			}
			env, err := json.Marshal(tokens)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), proxytest.DefaultTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, "testdata/mqttjs/scenarios.js", name, "mqtt://"+addr)
			cmd.Env = append(os.Environ(), "MQTTJS_TOKENS="+string(env))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("MQTT.js scenario %s: %v\n%s", name, err, out)
			}
			var transcript []string
			for line := range strings.Lines(string(out)) {
				transcript = append(transcript, normalizeExpiry(strings.TrimSuffix(line, "\n")))
			}
			return transcript
		}
	}
	paho := pahoScenarios() // the same scenarios, in the same order
	return []scenario{
		{name: paho[0].name, lines: paho[0].lines, run: play("qos", "qos-sub", "qos-pub")},
		{name: paho[1].name, lines: paho[1].lines, run: play("retained", "ret-pub", "ret-late")},
		{name: paho[2].name, lines: paho[2].lines, run: play("will", "will-watch", "will-dev")},
		{name: paho[3].name, lines: paho[3].lines, run: play("session", "keeper", "queue-pub")},
	}
}

// cliFormat prints a received message with every property mosquitto_sub
// knows, fields separated by |.
const cliFormat = "%t|q%q|r%r|%p|user=%P|expiry=%E|content=%C|response=%R|correlation=%D|format=%F"

// normalizeExpiry makes a transcript line that another program printed
// (mosquitto_sub, MQTT.js) comparable across runs: its expiry field reads
// as expiryText shows it.
func normalizeExpiry(line string) string {
	fields := strings.Split(line, "|")
	for i, f := range fields {
		if value, ok := strings.CutPrefix(f, "expiry="); ok && value != "" {
			v, err := strconv.ParseUint(value, 10, 32)
			if err == nil {
				fields[i] = "expiry=" + expiryText(uint32(v), true)
			}
		}
	}
	return strings.Join(fields, "|")
}

// cliScenarios are the scenarios run with mosquitto_pub and mosquitto_sub
// for one protocol version ("mqttv311", "mqttv5").
func cliScenarios(version string) []scenario {
	v5 := version == "mqttv5"
	client := func(t *testing.T, addr, id string, args ...string) []string {
		a := append(proxytest.AddrArgs(t, addr), "-V", version, "-i", id, "-u", "user-"+id, "-P", mint(t, e2eSecret, id, nil))
		return append(a, args...)
	}
	properties := func() []string {
		if !v5 {
			return nil
		}
		return []string{
			"-D", "PUBLISH", "user-property", "origin", "scenario",
			"-D", "PUBLISH", "message-expiry-interval", strconv.Itoa(sentExpiry),
			"-D", "PUBLISH", "content-type", "text/plain",
			"-D", "PUBLISH", "response-topic", "replies",
			"-D", "PUBLISH", "correlation-data", "corr-1",
			"-D", "PUBLISH", "payload-format-indicator", "1",
		}
	}
	pub := func(t *testing.T, args []string) {
		t.Helper()
		if res := proxytest.Pub(t, append(args, properties()...)...); res.Err != nil || res.Connack != 0 {
			t.Fatalf("mosquitto_pub: CONNACK %d, %v\n%s", res.Connack, res.Err, res.Output)
		}
	}
	next := func(t *testing.T, sub *proxytest.Sub) string {
		t.Helper()
		line, ok := sub.Next(proxytest.DefaultTimeout)
		if !ok {
			t.Fatalf("mosquitto_sub received nothing; output:\n%s", sub.Output())
		}
		return normalizeExpiry(line)
	}
	return []scenario{
		{name: "QoS 0, 1, 2", lines: 3, run: func(t *testing.T, addr string) []string {
			sub := proxytest.StartSub(t, client(t, addr, "qos-sub", "-t", "qos/#", "-q", "2", "-F", cliFormat)...)
			var transcript []string
			for _, qos := range []string{"0", "1", "2"} {
				pub(t, client(t, addr, "qos-pub", "-t", "qos/"+qos, "-q", qos, "-m", "hello "+qos))
				transcript = append(transcript, next(t, sub))
			}
			return transcript
		}},
		{name: "retained", lines: 1, run: func(t *testing.T, addr string) []string {
			pub(t, client(t, addr, "ret-pub", "-t", "ret/1", "-q", "1", "-r", "-m", "kept"))
			late := proxytest.StartSub(t, client(t, addr, "ret-late", "-t", "ret/#", "-q", "1", "-F", cliFormat)...)
			return []string{next(t, late)}
		}},
		{name: "will on a lost connection", lines: 1, run: func(t *testing.T, addr string) []string {
			watcher := proxytest.StartSub(t, client(t, addr, "will-watch", "-t", "will/#", "-q", "1", "-F", cliFormat)...)
			device := client(t, addr, "will-dev", "-t", "nothing", "--will-topic", "will/dev", "--will-payload", "gone", "--will-qos", "1")
			if v5 {
				device = append(device, "-D", "WILL", "user-property", "why", "lost", "-D", "WILL", "content-type", "text/plain")
			}
			killAfterSubscribe(t, device...)
			return []string{next(t, watcher)}
		}},
		{name: "persistent session, queued messages", lines: 3, run: func(t *testing.T, addr string) []string {
			persistent := []string{"-c", "-t", "queue/#", "-q", "1", "-F", cliFormat}
			if v5 {
				persistent = append(persistent, "-x", strconv.Itoa(sentExpiry))
			}
			// -E: subscribe, disconnect and exit, which Next waits for.
			// (SIGTERM just after the SUBACK sometimes hangs mosquitto_sub.)
			first := proxytest.StartSub(t, client(t, addr, "keeper", append(persistent, "-E")...)...)
			if line, ok := first.Next(proxytest.DefaultTimeout); ok {
				t.Fatalf("the first subscription got %q, want nothing before it exits", line)
			}
			for i := range 3 {
				pub(t, client(t, addr, "queue-pub", "-t", "queue/1", "-q", "1", "-m", fmt.Sprintf("queued %d", i)))
			}
			again := proxytest.StartSub(t, client(t, addr, "keeper", persistent...)...)
			var transcript []string
			for range 3 {
				transcript = append(transcript, next(t, again))
			}
			return transcript
		}},
	}
}

// killAfterSubscribe runs mosquitto_sub with args until its subscription
// is acknowledged, then kills it: the broker sees the connection lost
// without DISCONNECT and publishes the client's will.
func killAfterSubscribe(t *testing.T, args ...string) {
	t.Helper()
	// stdbuf: into a pipe, mosquitto_sub's -d lines would stay buffered.
	cmd := exec.Command(proxytest.LookPath(t, "stdbuf"), append([]string{"-oL", proxytest.LookPath(t, "mosquitto_sub"), "-d"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	subscribed := make(chan bool, 1)
	var output strings.Builder
	var wg sync.WaitGroup
	wg.Go(func() {
		lines := bufio.NewScanner(out)
		for lines.Scan() {
			output.WriteString(lines.Text() + "\n")
			if strings.Contains(lines.Text(), "received SUBACK") {
				subscribed <- true
			}
		}
		subscribed <- false
	})
	defer func() {
		cmd.Process.Kill()
		wg.Wait()
		cmd.Wait()
	}()
	select {
	case ok := <-subscribed:
		if !ok {
			wg.Wait()
			t.Fatalf("mosquitto_sub %v ended before subscribing:\n%s", args, output.String())
		}
	case <-time.After(proxytest.DefaultTimeout):
		t.Fatalf("mosquitto_sub %v did not subscribe within %v", args, proxytest.DefaultTimeout)
	}
}

// TestRealClientsSameThroughProxy runs the same pub/sub scenarios with
// paho.golang and MQTT.js (MQTT 5) and with mosquitto_pub and
// mosquitto_sub (MQTT 3.1.1 and 5) against a mosquitto broker directly and against another
// through the proxy, and requires identical transcripts: every message
// with its QoS, retain flag and properties, and the session flags.
func TestRealClientsSameThroughProxy(t *testing.T) {
	proxytest.RequireMosquitto(t)
	proxytest.VerifyNoLeaks(t)
	suites := map[string]func(t *testing.T) []scenario{
		"paho":               func(*testing.T) []scenario { return pahoScenarios() },
		"MQTT.js":            mqttjsScenarios,
		"mosquitto mqttv311": func(*testing.T) []scenario { return cliScenarios("mqttv311") },
		"mosquitto mqttv5":   func(*testing.T) []scenario { return cliScenarios("mqttv5") },
	}
	for _, name := range slices.Sorted(maps.Keys(suites)) {
		t.Run(name, func(t *testing.T) {
			scenarios := suites[name](t)
			// Brokers of its own, so that no session or retained message
			// of another suite is there.
			direct := proxytest.StartMosquitto(t)
			behind := proxytest.StartMosquitto(t)
			proxied := startProxy(t, &Proxy{Upstream: behind.Addr, Verifier: jwtChain(t, boundHS256)})
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					want := sc.run(t, direct.Addr)
					got := sc.run(t, proxied)
					if len(want) != sc.lines {
						t.Fatalf("directly, the scenario produced %d lines, want %d:\n%s", len(want), sc.lines, strings.Join(want, "\n"))
					}
					if !slices.Equal(got, want) {
						t.Errorf("through the proxy:\n%s\ndirectly:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
					}
				})
			}
		})
	}
}
