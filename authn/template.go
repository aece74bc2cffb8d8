package authn

import (
	"fmt"
	"strconv"
	"strings"
)

// claimsPrefix starts a placeholder naming a claim: ${claims.sub}.
const claimsPrefix = "claims."

// requestPlaceholders are the ${name} values that come from the client's
// CONNECT and TLS certificate, and where each comes from.
var requestPlaceholders = map[string]func(*Request) string{
	"clientid": func(r *Request) string { return r.ClientID },
	"username": func(r *Request) string {
		if !r.HasUsername {
			return ""
		}
		return r.Username
	},
	"cert_common_name": func(r *Request) string { return r.CertCommonName },
	"cert_subject":     func(r *Request) string { return r.CertSubject },
}

// Template is text with placeholders that Render fills in for one client:
// ${clientid}, ${username}, ${cert_common_name} and ${cert_subject} from
// its CONNECT and certificate, and ${claims.NAME} from the top-level claim
// NAME of its verified token. A "$" not followed by "{" is literal text.
//
// verify_claims values are templates too, without ${claims.NAME}: they
// bind the token to the CONNECT, and a claim compared with itself would
// bind nothing.
//
// Build one with ParseTemplate. The zero value has no parts and renders as
// the empty string.
type Template struct {
	text  string // as configured, for errors
	parts []templatePart
}

// templatePart is literal text, or a placeholder when value is set.
type templatePart struct {
	literal string
	value   func(req *Request, claims map[string]any) (string, bool)
}

// ParseTemplate parses s, which may use every placeholder. An unknown or
// unterminated placeholder is an error, so that a typo cannot turn into a
// literal that matches or names nobody.
func ParseTemplate(s string) (Template, error) { return parseTemplate(s, true) }

// parseTemplate splits s into literal text and placeholders; ${claims.NAME}
// is allowed only when withClaims is true.
func parseTemplate(s string, withClaims bool) (Template, error) {
	t := Template{text: s}
	rest := s
	for rest != "" {
		start := strings.Index(rest, "${")
		if start < 0 {
			t.parts = append(t.parts, templatePart{literal: rest})
			break
		}
		if start > 0 {
			t.parts = append(t.parts, templatePart{literal: rest[:start]})
		}
		end := strings.IndexByte(rest[start:], '}')
		if end < 0 {
			return Template{}, fmt.Errorf("unterminated placeholder in %q", s)
		}
		value, err := placeholder(rest[start+2:start+end], withClaims)
		if err != nil {
			return Template{}, err
		}
		t.parts = append(t.parts, templatePart{value: value})
		rest = rest[start+end+1:]
	}
	return t, nil
}

// placeholder returns how the placeholder ${name} is resolved.
func placeholder(name string, withClaims bool) (func(*Request, map[string]any) (string, bool), error) {
	if claim, ok := strings.CutPrefix(name, claimsPrefix); ok {
		switch {
		case !withClaims:
			return nil, fmt.Errorf("placeholder ${%s} is not allowed here: verify_claims compares the token's claims with the client's CONNECT, not with themselves", name)
		case claim == "":
			return nil, fmt.Errorf("placeholder ${%s} names no claim; write ${claims.sub}, for example", name)
		}
		return func(_ *Request, claims map[string]any) (string, bool) {
			return claimText(claims[claim])
		}, nil
	}
	fromRequest, known := requestPlaceholders[name]
	if !known {
		claims := ""
		if withClaims {
			claims = ", ${claims.NAME}"
		}
		return nil, fmt.Errorf("unknown placeholder ${%s}; known are ${clientid}, ${username}, ${cert_common_name}, ${cert_subject}%s", name, claims)
	}
	return func(req *Request, _ map[string]any) (string, bool) { return fromRequest(req), true }, nil
}

// Render fills the placeholders in with req's values and claims (nil for
// none). It reports false when a placeholder has no value or an empty one:
// no username, no certificate, a claim that is absent, empty, null, an
// array or an object. Neither a token nor an upstream identity may be
// bound to nothing. Claims render as claimMatches compares them: a string
// as is, a number as written in the token, a boolean as true or false.
func (t Template) Render(req *Request, claims map[string]any) (string, bool) {
	if len(t.parts) == 1 { // the common case, without building a string
		return t.parts[0].resolve(req, claims)
	}
	var b strings.Builder
	for _, p := range t.parts {
		s, ok := p.resolve(req, claims)
		if !ok {
			return "", false
		}
		b.WriteString(s)
	}
	return b.String(), true
}

func (p templatePart) resolve(req *Request, claims map[string]any) (string, bool) {
	if p.value == nil {
		return p.literal, true
	}
	s, ok := p.value(req, claims)
	return s, ok && s != ""
}

// String returns the template as configured, quoted.
func (t Template) String() string { return strconv.Quote(t.text) }

// HasPlaceholders reports whether t has a placeholder. A template without
// one renders the same text for every client.
func (t Template) HasPlaceholders() bool {
	for _, p := range t.parts {
		if p.value != nil {
			return true
		}
	}
	return false
}

// Shape returns t's text with every placeholder replaced by stand: the
// literal text and where the values go, for checks on the text around
// the placeholders, such as the levels of a topic filter.
func (t Template) Shape(stand string) string {
	var b strings.Builder
	for _, p := range t.parts {
		if p.value != nil {
			b.WriteString(stand)
		} else {
			b.WriteString(p.literal)
		}
	}
	return b.String()
}
