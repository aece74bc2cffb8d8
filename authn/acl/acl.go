// Package acl decides whether an MQTT client may publish to a topic or
// subscribe to a filter, from rules in its token and in the
// configuration, as EMQX's authorization does: rules and a client in,
// decisions out, no sockets and no packets.
//
// Typical usage:
//
//	cfg, err := acl.FromConfig(file.Authorization) // once, at start and on reload
//	if err != nil {
//		return err // names the rule: authorization.rules[2].topics[0]: ...
//	}
//	// For each accepted client, once:
//	policy, err := cfg.Compile(acl.Client{Request: &req, Claims: id.Claims, ACLClaim: "acl"})
//	if err != nil {
//		return err // a malformed acl claim: refuse the CONNECT (authn.ErrTokenMalformed)
//	}
//	// For each PUBLISH, and each filter of a SUBSCRIBE:
//	d := policy.Allow(acl.Request{Action: acl.Publish, Topic: "devices/c1/temp", QoS: 1})
//	if !d.Allowed {
//		log(d.String()) // deny: config rule 0: deny publish "devices/+/temp"
//	}
//
// # Where rules come from
//
// A token carries rules in a claim (acl by default) in either of EMQX's
// formats, told apart by shape:
//
//   - a list of rules (EMQX 5.5 and later), checked in order:
//     [{"permission": "allow", "action": "publish", "topic": "t/${clientid}",
//     "qos": [0, 1], "retain": false}, ...]. "topics" may give several
//     filters; "action" is publish (or pub), subscribe (or sub) or all;
//     qos and retain are optional. A request no rule applies to goes on
//     to the configured rules.
//   - an object of allow lists (EMQX 4, and the old format of EMQX 5):
//     {"pub": [...], "sub": [...], "all": [...]}, where %c and %u, as
//     whole levels, are the client identifier and user name. A request
//     none of its filters names is denied: the lists are all there is.
//
// The configuration's rules (authorization.rules) are in the first format
// and are checked after the token's; a request that no rule applies to is
// decided by no_match, allow unless configured otherwise. The first rule
// that applies decides.
//
// Topics are templates (see authn.Template): ${clientid}, ${username},
// ${cert_common_name}, ${cert_subject} and ${claims.NAME} are filled in
// once per client by Compile. A value that is absent or empty, or that
// holds '/', '+', '#' or U+0000, or that would make a filter begin with
// '$', cannot be put in a filter safely: such a filter matches no topic
// in an allow rule and every topic in a deny rule, so that a client's
// own values (a client identifier "#", say) never widen what it may do.
// A topic written "eq FILTER" is FILTER literally, wildcards and
// placeholders included, as EMQX documents it: "eq a/#" is only the
// subscription a/#.
//
// # Matching
//
// A publish is named by a rule whose filter matches its topic. A
// subscription is named by an allow rule only when the rule's filter
// covers it, that is matches every topic the subscription can receive
// ("a/#" covers "a/+/b"; "a/+" does not cover "a/#"), and by a deny rule
// when the two filters share a topic, so that a wildcard subscription
// cannot take in what a deny rule names. Filters beginning with a
// wildcard do not match topics beginning with '$' [MQTT-4.7.2-1].
// $share/GROUP/f, $queue/f and $exclusive/f are checked as f, and
// $delayed/SECONDS/t as t, as EMQX does. A rule's qos applies to
// publishes and subscriptions, its retain to publishes only.
//
// A Policy is what a client may do: the token's rules rendered for it and
// the configured ones, shared by every client when they have no
// placeholders. Allow does not allocate.
package acl

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// DefaultClaim is the claim that carries a token's rules unless the
// authenticator names another, as EMQX's acl_claim_name.
const DefaultClaim = "acl"

// Config is the configured rules and no_match, compiled once. Its zero
// value has no rules and allows what a token does not decide. It is
// safe for concurrent use.
type Config struct {
	rules     []rule
	templated bool       // a filter has placeholders: each policy renders its own
	noMatch   Permission // zero means Allow
	shared    *Policy    // for clients without token rules, when !templated
}

// New compiles rules, the configured ones, and noMatch, which decides
// a request no rule applies to (zero means Allow). Errors name every
// faulty rule and field, such as "rules[1].topics[0]: ...".
func New(rules []Rule, noMatch Permission) (*Config, error) { return newConfig(rules, noMatch, "") }

// newConfig is New, with errors prefixed with at.
func newConfig(rules []Rule, noMatch Permission, at string) (*Config, error) {
	c := &Config{noMatch: noMatch}
	var errs []error
	if noMatch != 0 && noMatch != Allow && noMatch != Deny {
		errs = append(errs, fmt.Errorf("%sno_match: %s is not allow or deny", at, noMatch))
	}
	src := append([]Rule(nil), rules...) // the caller may reuse rules
	for i := range src {
		r, ruleErrs := compileRule(&src[i])
		for _, err := range ruleErrs {
			errs = append(errs, fmt.Errorf("%srules[%d].%w", at, i, err))
		}
		for _, f := range r.filters {
			c.templated = c.templated || f.kind == kindTemplate
		}
		c.rules = append(c.rules, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if !c.templated {
		c.shared = c.policy(nil, false, c.rules)
	}
	return c, nil
}

// Client is a client that a Policy is compiled for.
type Client struct {
	// Request is the client's CONNECT and certificate, which fill in
	// ${clientid}, ${username}, ${cert_common_name} and ${cert_subject}.
	// Nil is a client with none of them.
	Request *authn.Request
	// Claims are the client's verified token claims (authn.Identity's):
	// its rules, and the values of ${claims.NAME}. Nil for a client
	// without a token.
	Claims map[string]any
	// ACLClaim names the claim with the token's rules: the
	// authenticator's acl.claim. Empty means DefaultClaim.
	ACLClaim string
}

// Compile returns what cl may do: its token's rules, if its claims have
// the ACL claim, then the configured rules, with their placeholders
// filled in. A claim in neither format, or with a faulty rule, is an
// error that wraps authn.ErrTokenMalformed: EMQX refuses such a client's
// CONNECT as a bad user name or password.
func (c *Config) Compile(cl Client) (*Policy, error) {
	name := cl.ACLClaim
	if name == "" {
		name = DefaultClaim
	}
	claim, hasClaim := cl.Claims[name]
	if !hasClaim && c.shared != nil {
		return c.shared, nil
	}
	req := cl.Request
	if req == nil {
		req = &authn.Request{}
	}
	var token []rule
	whitelist := false
	if hasClaim {
		rules, format, err := ParseClaim(claim)
		if err != nil {
			return nil, fmt.Errorf("%w: claim %.64q: %w", authn.ErrTokenMalformed, name, err)
		}
		whitelist = format == FormatLists
		var errs []error
		for i := range rules {
			r, ruleErrs := compileRule(&rules[i])
			for _, err := range ruleErrs {
				errs = append(errs, fmt.Errorf("[%d].%w", i, err))
			}
			token = append(token, r.render(req, cl.Claims))
		}
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("%w: claim %.64q: %w", authn.ErrTokenMalformed, name, err)
		}
	}
	configured := c.rules
	if c.templated {
		configured = make([]rule, len(c.rules))
		for i := range c.rules {
			configured[i] = c.rules[i].render(req, cl.Claims)
		}
	}
	p := c.policy(token, hasClaim, configured)
	p.whitelist = whitelist
	return p, nil
}

// policy builds a Policy of token and configured rules.
func (c *Config) policy(token []rule, hasToken bool, configured []rule) *Policy {
	p := &Policy{token: token, hasToken: hasToken, config: configured, noMatch: c.noMatch}
	if p.noMatch == 0 {
		p.noMatch = Allow
	}
	p.unrestricted = !hasToken && p.noMatch == Allow
	for i := range configured {
		p.unrestricted = p.unrestricted && configured[i].allow
	}
	return p
}

// render returns r with its filters rendered for a client.
func (r rule) render(req *authn.Request, claims map[string]any) rule {
	templated := false
	for i := range r.filters {
		templated = templated || r.filters[i].kind == kindTemplate
	}
	if !templated {
		return r
	}
	filters := make([]filter, len(r.filters))
	for i := range r.filters {
		filters[i] = r.filters[i].render(req, claims, r.allow)
	}
	r.filters = filters
	return r
}

// Policy is what one client may do. Allow is safe for concurrent use.
type Policy struct {
	token        []rule
	hasToken     bool // the token has the ACL claim, even with no rule
	whitelist    bool // the token's rules are EMQX's allow lists
	config       []rule
	noMatch      Permission
	unrestricted bool
	expired      atomic.Bool
}

// Request is what a client asks to do.
type Request struct {
	// Action is Publish or Subscribe.
	Action Action
	// Topic is the PUBLISH's topic name (its alias resolved), or one
	// filter of a SUBSCRIBE as sent, $share/GROUP/ and the like included.
	Topic string
	// QoS is the PUBLISH's QoS, or the QoS the subscription asks for.
	QoS byte
	// Retain is the PUBLISH's retain flag; ignored for Subscribe.
	Retain bool
	// Delivery, with Subscribe, asks whether the client may receive a
	// message the broker delivers to Topic, a topic name: whether a
	// subscription the rules allow receives it. An allow rule `eq F`
	// applies when F matches the topic (the subscription F receives it); a
	// deny rule `eq F` does not apply (it denies the one subscription F,
	// not the topics that others receive).
	Delivery bool
}

// Source is where a decision came from.
type Source uint8

// The sources of decisions.
const (
	// SourceInvalid: the request is malformed (a topic name with a
	// wildcard, a filter with '#' not last, a $share filter without a
	// group, a QoS over 2): denied, as the broker would refuse it.
	SourceInvalid Source = iota
	// SourceToken: the token's rules decided.
	SourceToken
	// SourceConfig: a configured rule decided.
	SourceConfig
	// SourceNoMatch: no rule applied; no_match decided.
	SourceNoMatch
)

// String returns "invalid", "token", "config" or "no_match": bounded,
// fit for a metric label.
func (s Source) String() string {
	switch s {
	case SourceToken:
		return "token"
	case SourceConfig:
		return "config"
	case SourceNoMatch:
		return "no_match"
	}
	return "invalid"
}

// Decision is the answer to one Request.
type Decision struct {
	// Allowed says whether the client may do what it asked.
	Allowed bool
	// Source is where the decision came from.
	Source Source
	// Index is the deciding rule's position among its source's rules:
	// the token's (in the old format, its pub, sub and all lists, those
	// present, in that order) or the configuration's. It is -1 when no
	// rule decided: no_match, an invalid request, a token whose allow
	// lists do not name the request, or whose rules ended with its exp.
	Index int

	rule    *rule
	expired bool
}

// Rule returns the deciding rule as written and, when it has
// placeholders, as filled in for the client; "" when no rule decided.
func (d Decision) Rule() string {
	if d.rule == nil {
		return ""
	}
	return d.rule.String()
}

// String says what was decided and why, such as
//
//	allow: token rule 0: allow publish "t/${clientid}" (for this client: "t/c1")
func (d Decision) String() string {
	verdict := "deny"
	if d.Allowed {
		verdict = "allow"
	}
	switch {
	case d.rule != nil:
		return fmt.Sprintf("%s: %s rule %d: %s", verdict, d.Source, d.Index, d.rule)
	case d.Source == SourceNoMatch:
		return verdict + ": no rule applies (no_match: " + verdict + ")"
	case d.Source == SourceToken && d.expired:
		return verdict + ": token: its rules ended when it expired"
	case d.Source == SourceToken:
		return verdict + ": token: not named by the acl claim's pub, sub or all lists"
	}
	return verdict + ": not a valid topic or filter for this action, or a QoS over 2"
}

// Allow decides on req: the token's rules, then the configured ones, the
// first that applies deciding; then no_match.
func (p *Policy) Allow(req Request) Decision {
	topic, ok := realTopic(req.Action, req.Topic)
	if !ok || req.QoS > 2 || (req.Action != Publish && req.Action != Subscribe) {
		return Decision{Source: SourceInvalid, Index: -1}
	}
	if p.hasToken {
		if p.expired.Load() {
			return Decision{Source: SourceToken, Index: -1, expired: true}
		}
		for i := range p.token {
			if r := &p.token[i]; r.applies(&req, topic) {
				return Decision{Allowed: r.allow, Source: SourceToken, Index: i, rule: r}
			}
		}
		if p.whitelist {
			return Decision{Source: SourceToken, Index: -1}
		}
	}
	for i := range p.config {
		if r := &p.config[i]; r.applies(&req, topic) {
			return Decision{Allowed: r.allow, Source: SourceConfig, Index: i, rule: r}
		}
	}
	return Decision{Allowed: p.noMatch == Allow, Source: SourceNoMatch, Index: -1}
}

// Unrestricted reports whether p allows every valid request: it has no
// token rules, its configured rules all allow and no_match is allow. A
// session with such a policy needs no checks (the broker refuses invalid
// requests itself).
func (p *Policy) Unrestricted() bool { return p.unrestricted }

// Expire ends the token's rules, as EMQX does when a token's exp passes
// while its client stays connected (disconnect_after_expire: false): from
// then on, every request is denied by the token. A policy without token
// rules is not changed.
func (p *Policy) Expire() {
	if p.hasToken {
		p.expired.Store(true)
	}
}
