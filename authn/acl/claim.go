package acl

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// Format is the shape of a token's ACL claim.
type Format uint8

// The formats of an ACL claim.
const (
	// FormatRules is EMQX 5.5's list of rules; a request none applies to
	// goes on to the configured rules.
	FormatRules Format = iota + 1
	// FormatLists is EMQX 4's object of allow lists, {"pub": [...],
	// "sub": [...], "all": [...]}; a request none names is denied.
	FormatLists
)

// ParseClaim reads a token's ACL claim, as decoded from JSON (objects as
// map[string]any, arrays as []any, numbers as json.Number or float64),
// into rules, and says which format it was in. Its rules are checked when
// compiled (Config.Compile): here only the claim's shape is.
//
// It is stricter than EMQX in what it accepts, so that a rule is never
// read in a way its issuer did not mean: a member it does not know is an
// error (EMQX ignores such members, but reads clientid_re, username_re,
// ipaddr, zone and listener as conditions that narrow a rule, which this
// proxy cannot apply), and so are a rule with both topic and topics, an
// empty topics or qos list, and any value of the wrong type.
func ParseClaim(claim any) ([]Rule, Format, error) {
	switch v := claim.(type) {
	case []any:
		rules := make([]Rule, 0, len(v))
		var errs []error
		for i, elem := range v {
			obj, ok := elem.(map[string]any)
			if !ok {
				errs = append(errs, fmt.Errorf("[%d]: a rule is an object, not %s", i, jsonType(elem)))
				continue
			}
			r, ruleErrs := parseRuleObject(obj)
			for _, err := range ruleErrs {
				errs = append(errs, fmt.Errorf("[%d].%w", i, err))
			}
			rules = append(rules, r)
		}
		if err := errors.Join(errs...); err != nil {
			return nil, 0, err
		}
		return rules, FormatRules, nil
	case map[string]any:
		rules, err := parseLists(v)
		return rules, FormatLists, err
	}
	return nil, 0, fmt.Errorf("%s is neither a list of rules nor an object of pub, sub and all lists", jsonType(claim))
}

// parseRuleObject reads one rule of EMQX 5.5's format. Errors name the
// member.
func parseRuleObject(obj map[string]any) (Rule, []error) {
	var r Rule
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, name := range slices.Sorted(maps.Keys(obj)) {
		v := obj[name]
		switch name {
		case "permission":
			s, _ := v.(string)
			switch s {
			case "allow":
				r.Permission = Allow
			case "deny":
				r.Permission = Deny
			default:
				bad("permission: %s is not \"allow\" or \"deny\"", jsonValue(v))
			}
		case "action":
			s, _ := v.(string)
			switch s {
			case "publish", "pub":
				r.Action = Publish
			case "subscribe", "sub":
				r.Action = Subscribe
			case "all":
				r.Action = All
			default:
				bad("action: %s is not \"publish\", \"subscribe\" or \"all\"", jsonValue(v))
			}
		case "topic":
			if _, both := obj["topics"]; both {
				bad("topic: give topic or topics, not both")
				continue
			}
			s, ok := v.(string)
			if !ok {
				bad("topic: %s is not a string", jsonValue(v))
				continue
			}
			r.Topics = []string{s}
		case "topics":
			if _, both := obj["topic"]; both {
				continue // said once, at topic
			}
			topics, err := stringList(v)
			if err != nil {
				bad("topics: %w", err)
				continue
			}
			if len(topics) == 0 {
				bad("topics: the list is empty")
				continue
			}
			r.Topics = topics
		case "qos":
			qos, err := parseQoS(v)
			if err != nil {
				bad("qos: %w", err)
				continue
			}
			r.QoS = qos
		case "retain":
			retain, err := parseRetain(v)
			if err != nil {
				bad("retain: %w", err)
				continue
			}
			r.Retain = retain
		case "clientid_re", "username_re", "ipaddr", "zone", "zone_re", "listener", "listener_re":
			bad("%s: EMQX's client conditions are not supported: a rule would apply to more clients than it says", name)
		default:
			bad("%.64s: unknown member; a rule has permission, action, topic or topics, qos and retain", name)
		}
	}
	if _, ok := obj["permission"]; !ok {
		bad("permission: required: \"allow\" or \"deny\"")
	}
	if _, ok := obj["action"]; !ok {
		bad("action: required: \"publish\", \"subscribe\" or \"all\"")
	}
	_, hasTopic := obj["topic"]
	if _, hasTopics := obj["topics"]; !hasTopic && !hasTopics {
		bad("topic: required (or topics)")
	}
	if r.Action == Subscribe {
		// EMQX reads retain for publishes only; a subscribe rule keeps
		// none, so that it is printed as it applies.
		r.Retain = nil
	}
	return r, errs
}

// parseLists reads EMQX 4's allow lists into rules: pub, sub and all, in
// that order (as EMQX 5 checks them), those present and not empty. %c and
// %u written as a whole level are ${clientid} and ${username}.
func parseLists(obj map[string]any) ([]Rule, error) {
	var errs []error
	for name := range obj {
		if name != "pub" && name != "sub" && name != "all" {
			errs = append(errs, fmt.Errorf("%.64s: unknown member; the lists are pub, sub and all", name))
		}
	}
	var rules []Rule
	for _, l := range []struct {
		name   string
		action Action
	}{{"pub", Publish}, {"sub", Subscribe}, {"all", All}} {
		v, ok := obj[l.name]
		if !ok {
			continue
		}
		topics, err := stringList(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", l.name, err))
			continue
		}
		if len(topics) == 0 {
			continue
		}
		for i, t := range topics {
			topics[i] = emqx4Placeholders(t)
		}
		rules = append(rules, Rule{Permission: Allow, Action: l.action, Topics: topics})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rules, nil
}

// emqx4Placeholders rewrites EMQX 4's %c and %u, which stand for the
// client identifier and user name where they make a whole level, as
// ${clientid} and ${username}. Elsewhere they are literal, as in EMQX 4,
// and so is a topic written with "eq ".
func emqx4Placeholders(topic string) string {
	if strings.HasPrefix(topic, EqPrefix) || !strings.Contains(topic, "%") {
		return topic
	}
	levels := strings.Split(topic, "/")
	for i, l := range levels {
		switch l {
		case "%c":
			levels[i] = "${clientid}"
		case "%u":
			levels[i] = "${username}"
		}
	}
	return strings.Join(levels, "/")
}

// stringList reads a JSON array of strings.
func stringList(v any) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s is not a list of strings", jsonValue(v))
	}
	out := make([]string, 0, len(arr))
	for i, elem := range arr {
		s, ok := elem.(string)
		if !ok {
			return nil, fmt.Errorf("[%d]: %s is not a string", i, jsonValue(elem))
		}
		out = append(out, s)
	}
	return out, nil
}

// parseQoS reads a rule's qos as EMQX does: 0, 1 or 2; a list of them;
// or a string of them separated by commas, such as "0,1". null is every
// QoS.
func parseQoS(v any) ([]byte, error) {
	var elems []any
	switch v := v.(type) {
	case nil:
		return nil, nil
	case []any:
		if len(v) == 0 {
			return nil, errors.New("the list is empty, so the rule would apply to nothing; leave qos out for every QoS")
		}
		elems = v
	case string:
		for _, s := range strings.Split(v, ",") {
			elems = append(elems, s)
		}
	default:
		elems = []any{v}
	}
	qos := make([]byte, 0, len(elems))
	for _, e := range elems {
		q, ok := qosValue(e)
		if !ok {
			return nil, fmt.Errorf("%s is not 0, 1 or 2", jsonValue(e))
		}
		qos = append(qos, q)
	}
	return qos, nil
}

// qosValue reads one QoS: the number 0, 1 or 2, or the string "0", "1" or
// "2".
func qosValue(v any) (byte, bool) {
	switch v := v.(type) {
	case json.Number:
		return qosValue(string(v))
	case string:
		if len(v) == 1 && v[0] >= '0' && v[0] <= '2' {
			return v[0] - '0', true
		}
	case float64:
		if v == 0 || v == 1 || v == 2 {
			return byte(v), true
		}
	case int:
		if v >= 0 && v <= 2 {
			return byte(v), true
		}
	}
	return 0, false
}

// parseRetain reads a rule's retain as EMQX does: true or false, 1 or 0,
// or those as strings; "all" and null are either (nil).
func parseRetain(v any) (*bool, error) {
	set, unset := true, false
	switch v := v.(type) {
	case nil:
		return nil, nil
	case bool:
		return &v, nil
	case string:
		switch v {
		case "true", "1":
			return &set, nil
		case "false", "0":
			return &unset, nil
		case "all":
			return nil, nil
		}
	case json.Number:
		switch v {
		case "1":
			return &set, nil
		case "0":
			return &unset, nil
		}
	case float64:
		if v == 1 || v == 0 {
			b := v == 1
			return &b, nil
		}
	case int:
		if v == 1 || v == 0 {
			b := v == 1
			return &b, nil
		}
	}
	return nil, fmt.Errorf("%s is not true, false or \"all\"", jsonValue(v))
}

// jsonType names the JSON type of a decoded value, for errors.
func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case string:
		return "a string"
	case json.Number, float64, int:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// jsonValue shows a decoded value in an error: a scalar as written (a
// string quoted and cut short, since it comes from the token), anything
// else by type.
func jsonValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprint(v)
	case string:
		return fmt.Sprintf("%.64q", v)
	case json.Number:
		return fmt.Sprintf("%.32s", string(v))
	case float64:
		if !math.IsInf(v, 0) && !math.IsNaN(v) {
			return fmt.Sprint(v)
		}
	case int:
		return fmt.Sprint(v)
	}
	return jsonType(v)
}
