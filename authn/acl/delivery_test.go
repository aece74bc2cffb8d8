package acl

import "testing"

// TestDelivery: a delivery (Request.Delivery) is allowed when a
// subscription the rules allow receives its topic: an allow rule `eq F`
// allows what F receives, a deny rule `eq F` does not reach the topics
// other subscriptions receive, other deny and allow rules apply as to a
// subscription to the topic itself, and a wildcard rule receives no `$`
// topic.
func TestDelivery(t *testing.T) {
	cfg, err := New([]Rule{
		{Permission: Deny, Action: Subscribe, Topics: []string{"eq open/#"}},
		{Permission: Deny, Action: Subscribe, Topics: []string{"open/secret"}},
		{Permission: Allow, Action: Subscribe, Topics: []string{"open/+"}},
		{Permission: Allow, Action: Subscribe, Topics: []string{"eq firmware/#"}, QoS: []byte{0, 1}},
		{Permission: Allow, Action: All, Topics: []string{"#"}, QoS: []byte{2}},
	}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	p, err := cfg.Compile(Client{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		topic string
		qos   byte
		want  bool
	}{
		{"firmware/v1", 1, true},   // eq firmware/# receives it
		{"firmware/v1/a", 0, true}, // likewise
		{"firmware/v1", 2, true},   // by the last rule
		{"open/x", 0, true},        // eq open/# denies that subscription only
		{"open/secret", 0, false},  // the deny rule
		{"other/x", 0, false},      // no_match
		{"$SYS/broker", 2, false},  // # receives no $ topic
		{"open/x/y", 1, false},     // open/+ does not receive it
	} {
		d := p.Allow(Request{Action: Subscribe, Topic: tc.topic, QoS: tc.qos, Delivery: true})
		if d.Allowed != tc.want {
			t.Errorf("delivery of %s at QoS %d: %s, want allowed %v", tc.topic, tc.qos, d, tc.want)
		}
	}
	if d := p.Allow(Request{Action: Subscribe, Topic: "firmware/v1", QoS: 1}); d.Allowed {
		t.Errorf("a subscription to firmware/v1: %s, want denied (eq allows firmware/# alone)", d)
	}
}
