package proxy

import (
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/filter"
)

// Authorization is what authenticated clients may publish and subscribe
// to: a client's policy is its token's rules (the acl claim its
// authenticator names, authn.Identity.ACLClaim), then Rules. A session
// whose policy allows everything is relayed byte for byte; the others are
// framed, and each PUBLISH and SUBSCRIBE judged (package filter).
type Authorization struct {
	// Rules are the configured rules and no_match (acl.FromConfig). Nil
	// means none: what a token's rules do not decide is allowed.
	Rules *acl.Config
	// DisconnectOnDeny ends a session at its first denial
	// (authorization.deny_action: disconnect), with DISCONNECT 0x87 to an
	// MQTT 5 client; unset, a denial is answered and the session goes on.
	DisconnectOnDeny bool
}

// noRules is Authorization.Rules when nil: every client without token
// rules gets its one shared policy, which allows everything.
var noRules = func() *acl.Config {
	c, err := acl.New(nil, acl.Allow)
	if err != nil {
		panic(err) // no rule to be faulty
	}
	return c
}()

// policyFor compiles the policy of a client whose CONNECT req was
// accepted as id: nil when it allows everything, so that the session is
// relayed unframed. A malformed acl claim is an error wrapping
// authn.ErrTokenMalformed: the CONNECT is refused, as EMQX refuses it.
func (a *Authorization) policyFor(req *authn.Request, id *authn.Identity) (*acl.Policy, error) {
	pol, err := a.compile(req, id)
	if err != nil || pol.Unrestricted() {
		return nil, err
	}
	return pol, nil
}

// judgeWill decides on the will of pk, a CONNECT accepted with rules, as
// on a PUBLISH of it (topic, QoS, retain flag), and counts the decision:
// the broker publishes the will for the client, so a will to a topic the
// client may not publish to refuses the CONNECT, as EMQX and mosquitto
// check it at CONNECT.
func (p *Proxy) judgeWill(rules *acl.Policy, pk *packets.Connect) acl.Decision {
	d := rules.Allow(acl.Request{Action: acl.Publish, Topic: pk.WillTopic, QoS: pk.WillQoS, Retain: pk.WillRetain})
	p.Metrics.authorized(false, d.Allowed)
	return d
}

// compile is the policy of the client req accepted as id, whatever it
// allows: a re-authentication's new rules replace the session's, even by
// rules that allow everything.
func (a *Authorization) compile(req *authn.Request, id *authn.Identity) (*acl.Policy, error) {
	rules := a.Rules
	if rules == nil {
		rules = noRules
	}
	return rules.Compile(acl.Client{Request: req, Claims: id.Claims, ACLClaim: id.ACLClaim})
}

// newFilter is the filter of a session with topic rules (nil: framing
// only) whose CONNECT was pk, under pol, the authorization and limits it
// was accepted with; for a client under an Authentication Method, one that
// answers its re-authentications (conn.method).
func (p *Proxy) newFilter(pol *policy, pk *packets.Connect, rules *acl.Policy, conn *openConn, listener string) *filter.Session {
	limit := pol.limits.maxPacketSize()
	var aliasMax uint16
	if pk.Properties != nil && pk.Properties.TopicAliasMaximum != nil {
		aliasMax = *pk.Properties.TopicAliasMaximum
	}
	cfg := filter.Config{
		Version:          pk.ProtocolVersion,
		ClientAliasMax:   aliasMax,
		Policy:           rules,
		DisconnectOnDeny: pol.authorization.DisconnectOnDeny,
		MaxPacketSize:    [2]int{limit, limit},
		OnDecision:       p.decisionHook(conn, listener),
	}
	if m := conn.method; m != nil {
		cfg.AuthMethod, cfg.Reauthenticate, cfg.Link = m.id.AuthMethod, m.reauthenticate, m
	}
	return filter.New(cfg)
}

// decisionHook counts every decision on a session's PUBLISHes and
// SUBSCRIBE filters, and logs each denial at info: the logger's sampler
// keeps a flood of them from flooding the log. It runs on the engine's
// goroutines, so the line is written on a goroutine of its own, as the
// closing line is.
func (p *Proxy) decisionHook(conn *openConn, listener string) func(acl.Action, []byte, acl.Decision) {
	return func(action acl.Action, topic []byte, d acl.Decision) {
		p.Metrics.authorized(action == acl.Subscribe, d.Allowed)
		if d.Allowed {
			return
		}
		if ce := p.logger().Check(zap.InfoLevel, "authorization denied"); ce != nil {
			go ce.Write(
				zap.String("listener", listener),
				zap.String("remote", conn.remote),
				zap.String("client_id", conn.clientID),
				zap.String("username", conn.username),
				zap.String("action", action.String()),
				zap.String("topic", string(topic)),
				zap.String("rule", d.String()),
			)
		}
	}
}
