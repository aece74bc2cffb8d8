package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/proxytest"
)

// pahoSuiteDir holds Eclipse Paho's MQTT 3.1.1 client interoperability
// tests and the script that runs them (see its README.md).
const pahoSuiteDir = "testdata/paho-interop"

// pahoShards split the suite into runs side by side, each against
// brokers of its own, as the tests' clients share their identifiers: the
// keepalive test alone waits 15 s for the broker to drop a silent client,
// nearly as long as all the others together.
var pahoShards = []struct {
	name      string
	only      []string // the tests to run; none means all but skip
	skip      []string
	runBudget time.Duration // one run of the shard's tests, with margin
}{
	{name: "keepalive", only: []string{"test_keepalive"}, runBudget: 60 * time.Second},
	{name: "others", skip: []string{"test_keepalive"}, runBudget: 90 * time.Second},
}

// pahoMinPasses is how many of the suite's ten tests pass directly
// against mosquitto 2.0 (all but test_overlapping_subscriptions: the
// broker sends one message, not at the highest QoS of the matching
// subscriptions; and test_subscribe_failure: the broker refuses no
// filter): fewer, and the comparison would prove little.
const pahoMinPasses = 8

// pahoAllowAll is an acl claim whose rules allow every action on every
// topic the suite uses: "#" does not match topics that begin with '$'
// [MQTT-4.7.2-1], so the $-topic test's topic has a rule of its own.
var pahoAllowAll = []any{map[string]any{"permission": "allow", "action": "all", "topics": []any{"#", "$TopicA/#"}}}

// runPahoSuite runs the tests of shard against the server at addr, each
// CONNECT carrying token as its password, and returns each test's
// outcome ("pass", "fail" or "error") by name.
func runPahoSuite(ctx context.Context, python, addr, token string, only, skip []string, results string) (map[string]string, string, error) {
	host, port, _ := strings.Cut(addr, ":")
	// -B: no bytecode files written into testdata; -E, -s: the
	// environment's Python paths and the user's packages cannot stand in
	// for the suite's modules.
	args := []string{"-B", "-E", "-s", "run_suite.py", "--host", host, "--port", port,
		"--username", "paho-interop", "--password", token, "--results", results}
	for _, name := range skip {
		args = append(args, "--skip", name)
	}
	cmd := exec.CommandContext(ctx, python, append(args, only...)...)
	cmd.Dir = pahoSuiteDir
	cmd.WaitDelay = 5 * time.Second
	output, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(output), fmt.Errorf("running the suite against %s: %w", addr, err)
	}
	raw, err := os.ReadFile(results)
	if err != nil {
		return nil, string(output), fmt.Errorf("reading the suite's results: %w", err)
	}
	outcomes := map[string]string{}
	if err := json.Unmarshal(raw, &outcomes); err != nil {
		return nil, string(output), fmt.Errorf("reading the suite's results %q: %w", raw, err)
	}
	return outcomes, string(output), nil
}

// TestPahoInteroperability: Eclipse Paho's MQTT 3.1.1 client
// interoperability tests (client_test.py: publish and subscribe at each
// QoS, retained messages, offline queueing, redelivery on reconnect,
// keepalive and wills, $ topics, unsubscribe, a second CONNECT and a
// wrong protocol name refused) pass through the proxy exactly as they do
// against mosquitto directly, every CONNECT carrying a token whose rules
// allow everything under no_match: deny, so that each session is framed
// and each PUBLISH and SUBSCRIBE judged; nothing is denied.
func TestPahoInteroperability(t *testing.T) {
	proxytest.RequireMosquitto(t)
	python := proxytest.LookPath(t, "python3")
	if python == "" {
		return
	}
	token := mint(t, e2eSecret, "paho-interop", withACL(pahoAllowAll))
	chain := jwtChain(t, configs.Authenticator{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret})

	type run struct {
		shard, via string
		only, skip []string
		budget     time.Duration
		addr       string
		results    string // the file the suite writes its outcomes to
		outcomes   map[string]string
		output     string
		err        error
		took       time.Duration
	}
	var runs []*run // in pairs: directly, then through the proxy
	var proxies []*observedProxy
	for _, s := range pahoShards {
		direct := proxytest.StartMosquitto(t)
		behind := proxytest.StartMosquitto(t)
		rules, err := acl.FromConfig(configs.Authorization{NoMatch: "deny"})
		if err != nil {
			t.Fatal(err)
		}
		o := startObserved(t, &Proxy{Upstream: behind.Addr, Verifier: chain, Authorization: Authorization{Rules: rules}})
		proxies = append(proxies, o)
		for _, r := range []*run{{via: "mosquitto", addr: direct.Addr}, {via: "the proxy", addr: o.addr}} {
			r.shard, r.only, r.skip, r.budget = s.name, s.only, s.skip, s.runBudget
			r.results = filepath.Join(t.TempDir(), "results.json")
			runs = append(runs, r)
		}
	}

	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), r.budget)
			defer cancel()
			start := time.Now()
			r.outcomes, r.output, r.err = runPahoSuite(ctx, python, r.addr, token, r.only, r.skip, r.results)
			r.took = time.Since(start)
		}()
	}
	wg.Wait()

	passes := 0
	for i := 0; i < len(runs); i += 2 {
		direct, proxied := runs[i], runs[i+1]
		for _, r := range []*run{direct, proxied} {
			if r.err != nil {
				t.Fatalf("shard %s via %s: %v\n%s", r.shard, r.via, r.err, r.output)
			}
			t.Logf("shard %s via %s, %v: %v", r.shard, r.via, r.took.Round(time.Millisecond), r.outcomes)
		}
		var differ []string
		for _, name := range testNames(direct.outcomes, proxied.outcomes) {
			if got, want := proxied.outcomes[name], direct.outcomes[name]; got != want {
				differ = append(differ, fmt.Sprintf("%s: %q through the proxy, %q directly", name, got, want))
			}
			if direct.outcomes[name] == "pass" {
				passes++
			}
		}
		if len(differ) > 0 {
			t.Errorf("shard %s:\n%s\nthe run through the proxy:\n%s", direct.shard, strings.Join(differ, "\n"), proxied.output)
		}
	}
	if passes < pahoMinPasses {
		t.Errorf("%d of the suite's tests passed directly against mosquitto, want at least %d", passes, pahoMinPasses)
	}

	// Each session was framed and its requests judged, every one allowed.
	judged := map[string]float64{}
	for _, o := range proxies {
		for _, action := range []string{"publish", "subscribe"} {
			for _, outcome := range []string{"allow", "deny"} {
				judged[action+" "+outcome] += o.metric(t, "mqtt_jwt_proxy_authorizations_total", "action="+action, "outcome="+outcome)
			}
		}
		accepted := o.logs.FilterMessage("authentication accepted")
		if framed := accepted.FilterField(zap.Bool("rules", true)).Len(); accepted.Len() == 0 || framed != accepted.Len() {
			t.Errorf("%d of %d sessions accepted with rules: true, want all, and some", framed, accepted.Len())
		}
	}
	if judged["publish allow"] == 0 || judged["subscribe allow"] == 0 || judged["publish deny"] != 0 || judged["subscribe deny"] != 0 {
		t.Errorf("authorizations through the proxy: %v; want publishes and subscriptions allowed, none denied", judged)
	}
}

// testNames returns the test names of both outcome maps, sorted.
func testNames(a, b map[string]string) []string {
	seen := map[string]bool{}
	var names []string
	for _, m := range []map[string]string{a, b} {
		for name := range m {
			if !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
	}
	sort.Strings(names)
	return names
}
