package acl

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
)

// Permission is what a rule decides: Allow or Deny. The zero value is
// neither, and a rule with it is refused.
type Permission uint8

// The permissions.
const (
	Allow Permission = iota + 1
	Deny
)

// String returns "allow" or "deny", as the configuration writes them.
func (p Permission) String() string {
	switch p {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "Permission(" + strconv.Itoa(int(p)) + ")"
}

// ParsePermission reads "allow" or "deny".
func ParsePermission(s string) (Permission, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	}
	return 0, fmt.Errorf("%.64q is not one of allow, deny", s)
}

// Action is what a client asks to do, or what a rule is about. Publish
// and Subscribe are both requests and rule actions; All, a rule's only,
// is both. The zero value is none, and a rule with it is refused.
type Action uint8

// The actions. All is Publish|Subscribe.
const (
	Publish Action = 1 << iota
	Subscribe
	All = Publish | Subscribe
)

// String returns "publish", "subscribe" or "all".
func (a Action) String() string {
	switch a {
	case Publish:
		return "publish"
	case Subscribe:
		return "subscribe"
	case All:
		return "all"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// ParseAction reads "publish", "subscribe" or "all", as the configuration
// writes them. Tokens may also write EMQX's "pub" and "sub".
func ParseAction(s string) (Action, error) {
	switch s {
	case "publish":
		return Publish, nil
	case "subscribe":
		return Subscribe, nil
	case "all":
		return All, nil
	}
	return 0, fmt.Errorf("%.64q is not one of publish, subscribe, all", s)
}

// EqPrefix starts a topic that a rule compares literally: "eq a/#" is
// only the filter a/#, wildcards and placeholders included as written.
const EqPrefix = "eq "

// Rule is one authorization rule, as written in the configuration or a
// token (EMQX's format): what it decides, for which action, topics and
// message options.
type Rule struct {
	// Permission is Allow or Deny. Required.
	Permission Permission
	// Action is Publish, Subscribe or All. Required.
	Action Action
	// Topics are topic filters, at least one, each a template that may
	// use ${clientid}, ${username}, ${cert_common_name}, ${cert_subject}
	// and ${claims.NAME} (see authn.Template). One written "eq " followed
	// by a filter is that filter literally, placeholders included.
	Topics []string
	// QoS lists the QoS levels (0, 1, 2) the rule is about; nil means
	// all. Publishes and subscriptions are compared by their QoS.
	QoS []byte
	// Retain, when set, limits the rule to publishes whose retain flag is
	// *Retain; nil means either. It does not apply to subscriptions.
	Retain *bool
}

// String returns the rule in one line, such as
//
//	allow publish "t/${clientid}" qos 0,1 retain false
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Permission.String())
	b.WriteByte(' ')
	b.WriteString(r.Action.String())
	for _, t := range r.Topics {
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(t))
	}
	if r.QoS != nil {
		b.WriteString(" qos ")
		for i, q := range r.QoS {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(int(q)))
		}
	}
	if r.Retain != nil {
		b.WriteString(" retain ")
		b.WriteString(strconv.FormatBool(*r.Retain))
	}
	return b.String()
}

// retainCondition is a rule's condition on a publish's retain flag.
type retainCondition uint8

const (
	retainEither retainCondition = iota
	retainSet
	retainUnset
)

// rule is a Rule compiled for matching. Its filters are rendered for one
// client, except in a Config, where a filter with placeholders keeps its
// template until a Policy renders it.
type rule struct {
	src     *Rule
	filters []filter
	allow   bool
	actions Action
	qos     uint8 // bit q set: QoS q is one the rule is about
	retain  retainCondition
}

// filterKind says how a filter is compared with a request's topic.
type filterKind uint8

const (
	// kindLiteral is a filter without wildcards: a single topic.
	kindLiteral filterKind = iota
	// kindWildcard is a filter with '+' or '#'.
	kindWildcard
	// kindEq is compared as text with the request's topic or filter.
	kindEq
	// kindNothing matches nothing: an allow filter whose placeholders
	// have no safe value for this client.
	kindNothing
	// kindEverything matches every topic: a deny filter whose
	// placeholders have no safe value for this client.
	kindEverything
	// kindTemplate is a filter still to be rendered (in a Config only).
	kindTemplate
)

// filter is one of a rule's topics.
type filter struct {
	text      string // the filter; for kindTemplate, as written
	kind      filterKind
	templated bool           // rendered from placeholders
	tmpl      *topicTemplate // for kindTemplate only: a policy keeps no template
}

// topicTemplate is a topic filter with placeholders.
type topicTemplate struct {
	tmpl  authn.Template
	shape string // the filter with each placeholder as shapeStand
}

// shapeStand stands for a placeholder's value where a filter's template
// is checked as a filter: one plain character.
const shapeStand = "x"

// compileRule checks r and compiles it. Errors name the field.
func compileRule(r *Rule) (rule, []error) {
	c := rule{src: r, allow: r.Permission == Allow, actions: r.Action, qos: 0b111}
	var errs []error
	if r.Permission != Allow && r.Permission != Deny {
		errs = append(errs, fmt.Errorf("permission: required: allow or deny"))
	}
	if r.Action != Publish && r.Action != Subscribe && r.Action != All {
		errs = append(errs, fmt.Errorf("action: required: publish, subscribe or all"))
	}
	if len(r.Topics) == 0 {
		errs = append(errs, fmt.Errorf("topics: at least one topic is required"))
	}
	for i, t := range r.Topics {
		f, err := compileFilter(t)
		if err != nil {
			errs = append(errs, fmt.Errorf("topics[%d]: %w", i, err))
			continue
		}
		c.filters = append(c.filters, f)
	}
	if r.QoS != nil {
		if len(r.QoS) == 0 {
			errs = append(errs, fmt.Errorf("qos: an empty list matches nothing; leave qos out for every QoS"))
		}
		c.qos = 0
		for _, q := range r.QoS {
			if q > 2 {
				errs = append(errs, fmt.Errorf("qos: %d is not 0, 1 or 2", q))
				continue
			}
			c.qos |= 1 << q
		}
	}
	if r.Retain != nil {
		c.retain = retainUnset
		if *r.Retain {
			c.retain = retainSet
		}
	}
	return c, errs
}

// compileFilter parses one of a rule's topics.
func compileFilter(text string) (filter, error) {
	if literal, ok := strings.CutPrefix(text, EqPrefix); ok {
		if err := checkRuleFilter(literal); err != nil {
			return filter{}, err
		}
		return filter{text: literal, kind: kindEq}, nil
	}
	tmpl, err := authn.ParseTemplate(text)
	if err != nil {
		return filter{}, err
	}
	if !tmpl.HasPlaceholders() {
		if err := checkRuleFilter(text); err != nil {
			return filter{}, err
		}
		return literalFilter(text), nil
	}
	shape := tmpl.Shape(shapeStand)
	if err := checkRuleFilter(shape); err != nil {
		return filter{}, fmt.Errorf("%w (with each placeholder as %q)", err, shapeStand)
	}
	return filter{text: text, kind: kindTemplate, tmpl: &topicTemplate{tmpl: tmpl, shape: shape}}, nil
}

// literalFilter is the compiled form of filter f, which has no
// placeholders.
func literalFilter(f string) filter {
	if hasWildcard(f) {
		return filter{text: f, kind: kindWildcard}
	}
	return filter{text: f, kind: kindLiteral}
}

// checkRuleFilter checks a rule's filter f: a valid topic filter that a
// request can match. Requests are checked without their $share/GROUP/,
// $queue/ and $exclusive/ prefixes, so a filter with one would never apply.
func checkRuleFilter(f string) error {
	if !validFilter(f) {
		return fmt.Errorf("%.256q is not a topic filter: it must not be empty, and '+' and '#' must be whole levels, '#' the last", f)
	}
	for _, prefix := range []string{sharePrefix, queuePrefix, exclusivePrefix} {
		if strings.HasPrefix(f, prefix) {
			return fmt.Errorf("%.256q would never apply: a subscription to %sf is authorized as f, so write the filter without %s", f, prefix, prefix)
		}
	}
	return nil
}

// render returns f for the client: a filter with placeholders is filled
// in, or, when a placeholder has no safe value, made to match nothing in
// an allow rule and every topic in a deny rule, so that no client value
// can widen what a rule allows or narrow what it denies. A value is not
// safe when it is absent or empty, holds '/', '+', '#' or U+0000 (it
// would add levels or wildcards), or makes the filter begin with '$'
// (it would name the broker's own topics, such as $SYS).
func (f filter) render(req *authn.Request, claims map[string]any, allow bool) filter {
	if f.kind != kindTemplate {
		return f
	}
	text, ok := f.tmpl.tmpl.Render(req, claims)
	if ok && safeRendering(text, f.tmpl.shape) {
		rendered := literalFilter(text)
		rendered.templated = true
		return rendered
	}
	if allow {
		return filter{kind: kindNothing, templated: true}
	}
	return filter{kind: kindEverything, templated: true}
}

// safeRendering reports whether text, rendered from a template of the
// given shape, got from its values nothing but plain characters within
// the levels the template wrote: values add characters to the shape's
// and remove none, so the same count of each special character means the
// values hold none.
func safeRendering(text, shape string) bool {
	for _, special := range []string{"/", "+", "#", "\x00"} {
		if strings.Count(text, special) != strings.Count(shape, special) {
			return false
		}
	}
	return text[0] != '$' || shape[0] == '$'
}

// applies reports whether the rule decides on a request for action a on
// topic (already without its prefixes) with qos and retain.
func (r *rule) applies(req *Request, topic string) bool {
	a := req.Action
	if r.actions&a == 0 || r.qos&(1<<req.QoS) == 0 {
		return false
	}
	if a == Publish && r.retain != retainEither && req.Retain != (r.retain == retainSet) {
		return false
	}
	delivery := a == Subscribe && req.Delivery
	for i := range r.filters {
		if f := &r.filters[i]; delivery && f.kind == kindEq {
			if r.allow && covers(f.text, topic) {
				return true
			}
		} else if f.applies(a, topic, r.allow) {
			return true
		}
	}
	return false
}

// applies reports whether the filter names topic for action a. A publish
// topic must match the filter. A subscription is named by an allow rule
// whose filter covers it (it receives nothing the rule does not allow:
// "a/#" covers "a/+/b", "a/+" does not cover "a/#"), and by a deny rule
// whose filter intersects it (it could receive a topic the rule denies),
// so that neither rule reaches further than its filter reads.
func (f *filter) applies(a Action, topic string, allow bool) bool {
	switch f.kind {
	case kindEq:
		return topic == f.text
	case kindLiteral:
		if a == Subscribe && !allow {
			return intersects(f.text, topic)
		}
		return topic == f.text
	case kindWildcard:
		if a == Subscribe && !allow {
			return intersects(f.text, topic)
		}
		return covers(f.text, topic)
	case kindEverything:
		return true
	}
	return false // kindNothing; kindTemplate is never matched
}

// String returns the rule as written and, when it has placeholders, what
// its filters became for this client, such as
//
//	allow publish "t/${clientid}" (for this client: "t/c1")
func (r *rule) String() string {
	var rendered []string
	for i := range r.filters {
		f := &r.filters[i]
		if !f.templated && f.kind != kindTemplate {
			continue
		}
		switch f.kind {
		case kindNothing:
			rendered = append(rendered, "no topic: a placeholder has no safe value")
		case kindEverything:
			rendered = append(rendered, "every topic: a placeholder has no safe value")
		case kindTemplate:
			rendered = append(rendered, "not rendered")
		default:
			rendered = append(rendered, strconv.Quote(f.text))
		}
	}
	if rendered == nil {
		return r.src.String()
	}
	return r.src.String() + " (for this client: " + strings.Join(rendered, ", ") + ")"
}
