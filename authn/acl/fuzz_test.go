package acl

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// smallUniverse reports whether the filters' universe is small enough to
// try every topic of it in a fuzz run.
func smallUniverse(filters ...string) bool {
	levels := map[string]bool{}
	for _, f := range filters {
		parts := strings.Split(f, "/")
		if len(parts) > 3 {
			return false
		}
		for _, l := range parts {
			levels[l] = true
		}
	}
	return len(levels) <= 5
}

// FuzzTopics checks covers and intersects against their definitions, on
// any two filters and a topic: covers(r, s) when every topic s matches, r
// matches; intersects(a, b) when some topic matches both. Where the
// filters are small, every topic that can tell them apart is tried;
// always, the given topic must not contradict either answer.
func FuzzTopics(f *testing.F) {
	for _, seed := range [][3]string{
		{"a/#", "a/+/b", "a/x/b"}, {"a/+", "a/#", "a"}, {"#", "$SYS/#", "$SYS/x"}, {"+/+", "/", "/"},
		{"a/+/#", "a/#", "a"}, {"a/secret", "a/+", "a/secret"}, {"$SYS/+", "+/x", "$SYS/x"}, {"a//b", "a/+/b", "a//b"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, r, s, topic string) {
		if !validFilter(r) || !validFilter(s) {
			return
		}
		cov, inter := covers(r, s), intersects(r, s)
		if inter != intersects(s, r) {
			t.Fatalf("intersects(%q, %q) = %v but not the other way round", r, s, inter)
		}
		if cov && !inter {
			t.Fatalf("%q covers %q but shares no topic with it", r, s)
		}
		if smallUniverse(r, s) {
			if want := checkCovers(r, s); cov != want {
				t.Fatalf("covers(%q, %q) = %v; trying every topic says %v", r, s, cov, want)
			}
			if want := checkIntersects(r, s); inter != want {
				t.Fatalf("intersects(%q, %q) = %v; trying every topic says %v", r, s, inter, want)
			}
		}
		if !validTopicName(topic) {
			return
		}
		rm, sm := refMatches(r, topic), refMatches(s, topic)
		if covers(r, topic) != rm {
			t.Fatalf("covers(%q, topic %q) = %v; the reference matcher says %v", r, topic, !rm, rm)
		}
		if cov && sm && !rm {
			t.Fatalf("%q covers %q, which matches %q, but %q does not", r, s, topic, r)
		}
		if rm && sm && !inter {
			t.Fatalf("%q and %q both match %q but do not intersect", r, s, topic)
		}
	})
}

// FuzzPolicy compiles any claim for any client and decides any request.
// Nothing may panic; a claim that is refused says why, as
// token_malformed; a decision is consistent with the request's validity
// and names a rule that exists; and a configured allow rule decides as
// the matching rules define.
func FuzzPolicy(f *testing.F) {
	for _, seed := range []struct {
		claim, rule, clientID, topic string
		subscribe                    bool
	}{
		{`[{"permission": "allow", "action": "publish", "topic": "t/${clientid}"}, {"permission": "deny", "action": "all", "topic": "t/3"}]`, "a/#", "c1", "t/c1", false},
		{`[{"permission": "allow", "action": "subscribe", "topic": "eq t/1/#", "qos": [1]}]`, "+/+", "c1", "$share/g/t/1/#", true},
		{`{"pub": ["d/%c/up"], "sub": ["d/%c/#"], "all": ["x/${username}"]}`, "#", "#", "d/#", true},
		{`{"pub": "x"}`, "a", "a/b", "a", false},
		{`[{"permission": "allow", "action": "all", "topics": ["${claims.sub}/#"], "qos": "0,2", "retain": "all"}]`, "$SYS/#", "+", "$SYS/x", true},
		{`"t/#"`, "a/+", "", "$delayed/1/a/b", false},
		{`[]`, "eq a/#", "c", "a/#", true},
	} {
		f.Add(seed.claim, seed.rule, seed.clientID, seed.topic, seed.subscribe, byte(1), false)
	}
	f.Fuzz(func(t *testing.T, claimText, ruleTopic, clientID, topic string, subscribe bool, qos byte, retain bool) {
		dec := json.NewDecoder(strings.NewReader(claimText))
		dec.UseNumber()
		var claim any
		if dec.Decode(&claim) != nil {
			return
		}
		cfg, err := New([]Rule{
			{Permission: Deny, Action: Publish, Topics: []string{"deny/${clientid}/x"}},
			{Permission: Allow, Action: All, Topics: []string{ruleTopic}},
		}, Deny)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("New refused a rule without saying why")
			}
			return
		}
		claims := map[string]any{"acl": claim, "sub": clientID}
		req := &authn.Request{ClientID: clientID, Username: clientID, HasUsername: true}
		action := Publish
		if subscribe {
			action = Subscribe
		}
		r := Request{Action: action, Topic: topic, QoS: qos, Retain: retain}

		p, err := cfg.Compile(Client{Request: req, Claims: claims})
		if err != nil {
			if authn.ReasonOf(err) != authn.ErrTokenMalformed || err.Error() == "" {
				t.Fatalf("claim %s refused with %v, not token_malformed", claimText, err)
			}
		} else {
			checkDecision(t, p, r)
		}

		// Without the claim, the configured allow rule alone decides,
		// as covers and the reference matcher do.
		p, err = cfg.Compile(Client{Request: req})
		if err != nil {
			t.Fatalf("Compile without a claim: %v", err)
		}
		d := checkDecision(t, p, r)
		real, ok := realTopic(action, topic)
		if !ok || qos > 2 || strings.HasPrefix(ruleTopic, EqPrefix) || strings.Contains(ruleTopic, "${") || d.Index == 0 {
			return
		}
		var want bool
		switch {
		case action == Publish:
			want = refMatches(ruleTopic, real)
		case smallUniverse(ruleTopic, real):
			want = checkCovers(ruleTopic, real)
		default:
			return
		}
		if d.Allowed != want {
			t.Fatalf("rule %q, %s %q: %s; want allowed %v", ruleTopic, action, topic, d, want)
		}
	})
}

// checkDecision decides r and checks the decision's consistency.
func checkDecision(t *testing.T, p *Policy, r Request) Decision {
	t.Helper()
	d := p.Allow(r)
	_, valid := realTopic(r.Action, r.Topic)
	valid = valid && r.QoS <= 2
	if (d.Source == SourceInvalid) == valid {
		t.Fatalf("%s %q qos %d: %s, with the request valid: %v", r.Action, r.Topic, r.QoS, d, valid)
	}
	var rules []rule
	switch d.Source {
	case SourceToken:
		rules = p.token
	case SourceConfig:
		rules = p.config
	}
	if (d.Index >= 0) != (d.rule != nil) || d.Index >= len(rules) || (d.rule != nil && d.rule != &rules[d.Index]) {
		t.Fatalf("%s %q: %s names rule %d of %d", r.Action, r.Topic, d, d.Index, len(rules))
	}
	if d.String() == "" {
		t.Fatal("a decision that says nothing")
	}
	return d
}
