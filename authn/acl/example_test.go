package acl_test

import (
	"fmt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
)

func Example() {
	// Configured once: each device under its own prefix, nothing else.
	cfg, err := acl.New([]acl.Rule{
		{Permission: acl.Allow, Action: acl.All, Topics: []string{"devices/${clientid}/#"}},
	}, acl.Deny)
	if err != nil {
		panic(err)
	}
	// A client whose token forbids it one topic: token rules come first.
	claims := map[string]any{"acl": []any{
		map[string]any{"permission": "deny", "action": "publish", "topic": "devices/${clientid}/config"},
	}}
	policy, err := cfg.Compile(acl.Client{Request: &authn.Request{ClientID: "dev1"}, Claims: claims})
	if err != nil {
		panic(err) // a malformed claim: refuse the CONNECT
	}
	for _, req := range []acl.Request{
		{Action: acl.Publish, Topic: "devices/dev1/temp", QoS: 1},
		{Action: acl.Publish, Topic: "devices/dev1/config"},
		{Action: acl.Subscribe, Topic: "$share/workers/devices/dev1/#"},
		{Action: acl.Subscribe, Topic: "devices/+/temp"},
	} {
		fmt.Printf("%s %s\n  %s\n", req.Action, req.Topic, policy.Allow(req))
	}
	// Output:
	// publish devices/dev1/temp
	//   allow: config rule 0: allow all "devices/${clientid}/#" (for this client: "devices/dev1/#")
	// publish devices/dev1/config
	//   deny: token rule 0: deny publish "devices/${clientid}/config" (for this client: "devices/dev1/config")
	// subscribe $share/workers/devices/dev1/#
	//   allow: config rule 0: allow all "devices/${clientid}/#" (for this client: "devices/dev1/#")
	// subscribe devices/+/temp
	//   deny: no rule applies (no_match: deny)
}
