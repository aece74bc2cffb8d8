package authn

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// maxJSONDepth bounds the nesting of header and claims. Real claims (an
// ACL claim included) nest a few levels; the bound keeps a hostile token
// from making the decoder, and the code walking claims, recurse thousands
// of times.
const maxJSONDepth = 32

// maxNumericDateSeconds bounds numeric dates, in seconds either side of
// 1970, so that time.Time arithmetic cannot overflow on a huge exp. It is
// some 146 billion years: every real date fits.
const maxNumericDateSeconds = 1 << 62

// jsonDecoder is a decoder with the reader it reads from, kept together
// so that decoding reuses both.
type jsonDecoder struct {
	dec *jsontext.Decoder
	src bytes.Reader
}

// jsonDecoders keeps decoders for reuse: a decoder's buffers cost more to
// allocate than the header and claims of a token take to decode.
var jsonDecoders = sync.Pool{New: func() any {
	d := new(jsonDecoder)
	d.dec = jsontext.NewDecoder(&d.src)
	return d
}}

// decodeJSONObject decodes one JSON object and nothing after it. Numbers
// stay json.Number so that large integers keep their precision. The
// decoder is strict where decoders disagree, so that a token cannot mean
// one thing to its issuer and another here: a key given twice in an
// object (the same after unescaping, at any depth), invalid UTF-8 and
// anything but whitespace after the object are errors.
func decodeJSONObject(data []byte) (map[string]any, error) {
	obj := make(map[string]any)
	if err := readJSONObject(data, memberInto(obj)); err != nil {
		return nil, err
	}
	return obj, nil
}

// memberInto returns a member function that decodes each member into obj.
func memberInto(obj map[string]any) func(string, *jsontext.Decoder) error {
	return func(name string, dec *jsontext.Decoder) error {
		v, err := decodeJSONValue(dec)
		obj[name] = v
		return err
	}
}

// readJSONObject reads data as decodeJSONObject does, and calls member
// with each member's name and dec at its value, which member must read
// whole (decodeJSONValue reads any): a caller that wants a few members
// need not build a map of all.
func readJSONObject(data []byte, member func(name string, dec *jsontext.Decoder) error) error {
	d := jsonDecoders.Get().(*jsonDecoder)
	defer func() {
		d.src.Reset(nil) // a pooled decoder keeps no token
		jsonDecoders.Put(d)
	}()
	d.src.Reset(data)
	dec := d.dec
	dec.Reset(&d.src)
	tok, err := dec.ReadToken()
	switch {
	case err == io.EOF:
		return errors.New("empty, not a JSON object")
	case err != nil:
		return err
	case tok.Kind() != '{':
		return fmt.Errorf("a JSON %s, not an object", jsonKindName(tok.Kind()))
	}
	if err := readMembers(dec, member); err != nil {
		return err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

// readMembers reads the members of the object whose '{' dec has just
// read, calling member for each, and then its '}'.
func readMembers(dec *jsontext.Decoder, member func(name string, dec *jsontext.Decoder) error) error {
	for dec.PeekKind() != '}' {
		name, err := dec.ReadToken()
		if err != nil {
			return err
		}
		if err := member(name.String(), dec); err != nil {
			return err
		}
	}
	_, err := dec.ReadToken()
	return err
}

// decodeJSONValue decodes the value dec is at, refusing nesting deeper
// than maxJSONDepth.
func decodeJSONValue(dec *jsontext.Decoder) (any, error) {
	tok, err := dec.ReadToken()
	if err != nil {
		return nil, err
	}
	kind := tok.Kind()
	if (kind == '{' || kind == '[') && dec.StackDepth() > maxJSONDepth {
		return nil, fmt.Errorf("nested deeper than %d levels", maxJSONDepth)
	}
	switch kind {
	case '[':
		arr := []any{}
		for dec.PeekKind() != ']' {
			v, err := decodeJSONValue(dec)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.ReadToken()
		return arr, err
	case '{':
		obj := make(map[string]any)
		if err := readMembers(dec, memberInto(obj)); err != nil {
			return nil, err
		}
		return obj, nil
	case '"':
		return tok.String(), nil
	case '0':
		return json.Number(tok.String()), nil // the number as written
	case 't', 'f':
		return tok.Bool(), nil
	default: // 'n'
		return nil, nil
	}
}

// jsonKindName names a JSON kind for an error.
func jsonKindName(kind jsontext.Kind) string {
	switch kind {
	case '[':
		return "array"
	case '"':
		return "string"
	case '0':
		return "number"
	case 't', 'f':
		return "boolean"
	}
	return "null"
}

// claimRules are an authenticator's checks on a token's claims.
type claimRules struct {
	leeway   time.Duration
	required []string        // claims that must be present
	issuer   string          // iss must equal it, when not empty
	audience string          // aud must equal or contain it, when not empty
	expected []expectedClaim // verify_claims, sorted by name
}

// expectedClaim is one verify_claims entry.
type expectedClaim struct {
	name  string
	value Template // without ${claims.NAME}
}

// timeClaims are the claims checked against the clock; verify_claims may
// not name them.
var timeClaims = []string{"exp", "nbf", "iat"}

// newClaimRules builds the checks from cfg. Errors name the option.
func newClaimRules(cfg configs.Authenticator) (claimRules, error) {
	rules := claimRules{
		leeway:   time.Duration(cfg.Leeway),
		required: slices.Clone(cfg.RequiredClaims),
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
	}
	var errs []error
	if rules.leeway < 0 {
		errs = append(errs, fmt.Errorf("leeway: %s is negative", rules.leeway))
	}
	if slices.Contains(rules.required, "") {
		errs = append(errs, errors.New("required_claims: a claim name is empty"))
	}
	// In name order, so that the errors are always reported alike.
	for _, name := range slices.Sorted(maps.Keys(cfg.VerifyClaims)) {
		value := cfg.VerifyClaims[name]
		if slices.Contains(timeClaims, name) {
			errs = append(errs, fmt.Errorf("verify_claims: %s may not be named here; it is checked against the clock (see required_claims and leeway)", name))
			continue
		}
		tmpl, err := parseTemplate(value, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("verify_claims.%s: %w", name, err))
			continue
		}
		rules.expected = append(rules.expected, expectedClaim{name: name, value: tmpl})
	}
	if err := errors.Join(errs...); err != nil {
		return claimRules{}, err
	}
	return rules, nil
}

// checkedClaims is what the checks learnt of a token's claims.
type checkedClaims struct {
	subject  string
	id       string    // jti; empty without one
	expiry   time.Time // zero without exp
	issuedAt time.Time // zero without iat
}

// check applies the rules to claims at now for req: claim types first (a
// malformed token says nothing else reliably), then presence, time, and
// values.
func (r *claimRules) check(claims map[string]any, req *Request, now time.Time) (checkedClaims, error) {
	var out checkedClaims
	times := make(map[string]time.Time, len(timeClaims)) // the time claims present
	for _, name := range timeClaims {
		v, present := claims[name]
		if !present {
			continue
		}
		t, err := numericDate(v)
		if err != nil {
			return out, fmt.Errorf("%w: %s: %w", ErrTokenMalformed, name, err)
		}
		times[name] = t
	}
	for _, name := range []string{"iss", "sub", "jti"} {
		if v, present := claims[name]; present {
			if _, ok := v.(string); !ok {
				return out, fmt.Errorf("%w: %s is not a string", ErrTokenMalformed, name)
			}
		}
	}
	if aud, present := claims["aud"]; present && !isStringOrStrings(aud) {
		return out, fmt.Errorf("%w: aud is neither a string nor an array of strings", ErrTokenMalformed)
	}
	for _, name := range r.required {
		if _, present := claims[name]; !present {
			return out, fmt.Errorf("%w: required claim %s is missing", ErrClaimMismatch, name)
		}
	}

	if exp, present := times["exp"]; present {
		if !exp.After(now.Add(-r.leeway)) {
			return out, fmt.Errorf("%w: exp %s is not after %s (leeway %s)", ErrTokenExpired, exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), r.leeway)
		}
		out.expiry = exp
	}
	for _, name := range []string{"nbf", "iat"} {
		if t, present := times[name]; present && t.After(now.Add(r.leeway)) {
			return out, fmt.Errorf("%w: %s %s is after %s (leeway %s)", ErrTokenNotYetValid, name, t.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), r.leeway)
		}
	}

	if r.issuer != "" && claims["iss"] != r.issuer {
		return out, fmt.Errorf("%w: iss is not %q", ErrClaimMismatch, r.issuer)
	}
	if r.audience != "" && !claimMatches(claims["aud"], r.audience) {
		return out, fmt.Errorf("%w: aud does not name %q", ErrClaimMismatch, r.audience)
	}
	for _, e := range r.expected {
		want, ok := e.value.Render(req, nil)
		if !ok {
			return out, fmt.Errorf("%w: %s: %s is empty for this client, so nothing can match", ErrClaimMismatch, e.name, e.value)
		}
		if !claimMatches(claims[e.name], want) {
			return out, fmt.Errorf("%w: %s does not match %s", ErrClaimMismatch, e.name, e.value)
		}
	}
	out.subject, _ = claims["sub"].(string)
	out.id, _ = claims["jti"].(string)
	out.issuedAt = times["iat"]
	return out, nil
}

// numericDate reads a NumericDate: seconds since 1970 as an integer or a
// fraction, saturated at ±maxNumericDateSeconds.
func numericDate(v any) (time.Time, error) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, fmt.Errorf("%T is not a number", v)
	}
	if sec, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		return time.Unix(min(max(sec, -maxNumericDateSeconds), maxNumericDateSeconds), 0), nil
	}
	// Fractions, exponents and integers beyond int64. ParseFloat gives
	// ±Inf for out-of-range values, which saturate like the rest.
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return time.Time{}, err
	}
	f = min(max(f, -maxNumericDateSeconds), maxNumericDateSeconds)
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

func isStringOrStrings(v any) bool {
	switch v := v.(type) {
	case string:
		return true
	case []any:
		for _, e := range v {
			if _, ok := e.(string); !ok {
				return false
			}
		}
		return true
	}
	return false
}

// claimMatches reports whether a claim's value is want, compared as text
// (see claimText). An array matches when one of its elements does. Absent
// claims, null and objects match nothing.
func claimMatches(claim any, want string) bool {
	if v, ok := claim.([]any); ok {
		return slices.ContainsFunc(v, func(e any) bool {
			text, ok := claimText(e)
			return ok && text == want
		})
	}
	text, ok := claimText(claim)
	return ok && text == want
}

// claimText is a scalar claim as text: a string as is, a number as written
// in the token, a boolean as true or false. Arrays, objects, null and
// absent claims have none.
func claimText(claim any) (string, bool) {
	switch v := claim.(type) {
	case string:
		return v, true
	case json.Number:
		return string(v), true
	case bool:
		return strconv.FormatBool(v), true
	}
	return "", false
}
