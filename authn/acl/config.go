package acl

import (
	"errors"
	"fmt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// FromConfig compiles the configuration's authorization section. Errors
// name every faulty key, such as "authorization.rules[2].topics[0]: ...";
// configs.Validate is expected to have run, and what it refuses is an
// error here too.
func FromConfig(a configs.Authorization) (*Config, error) {
	var errs []error
	bad := func(err error) { errs = append(errs, fmt.Errorf("authorization.%w", err)) }
	var noMatch Permission
	if a.NoMatch != "" {
		p, err := ParsePermission(a.NoMatch)
		if err != nil {
			bad(fmt.Errorf("no_match: %w", err))
		}
		noMatch = p
	}
	rules := make([]Rule, len(a.Rules))
	for i, cr := range a.Rules {
		r, ruleErrs := ruleFromConfig(cr)
		for _, err := range ruleErrs {
			bad(fmt.Errorf("rules[%d].%w", i, err))
		}
		rules[i] = r
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return newConfig(rules, noMatch, "authorization.")
}

// ruleFromConfig converts a configured rule. Errors name the key.
func ruleFromConfig(cr configs.AuthorizationRule) (Rule, []error) {
	var errs []error
	r := Rule{Topics: cr.Topics, Retain: cr.Retain}
	var err error
	if r.Permission, err = ParsePermission(cr.Permission); err != nil {
		errs = append(errs, fmt.Errorf("permission: %w", err))
	}
	if r.Action, err = ParseAction(cr.Action); err != nil {
		errs = append(errs, fmt.Errorf("action: %w", err))
	}
	switch {
	case cr.Topic != "" && len(cr.Topics) > 0:
		errs = append(errs, errors.New("topic: give topic or topics, not both"))
	case cr.Topic != "":
		r.Topics = []string{cr.Topic}
	}
	if r.Action == Subscribe && r.Retain != nil {
		errs = append(errs, errors.New("retain: applies to publishes only, not with action: subscribe"))
	}
	if cr.QoS != nil {
		r.QoS = make([]byte, 0, len(cr.QoS))
		for _, q := range cr.QoS {
			if q < 0 || q > 2 {
				errs = append(errs, fmt.Errorf("qos: %d is not 0, 1 or 2", q))
				continue
			}
			r.QoS = append(r.QoS, byte(q))
		}
	}
	return r, errs
}
