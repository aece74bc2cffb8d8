package revocation

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// MaxDocumentSize is the largest revocation document read, in bytes: a
// million UUID jti values take some 40 MB. The cap keeps a broken or
// hostile source from exhausting memory.
const MaxDocumentSize = 64 << 20

// The keys of a revocation document.
const (
	keyJTI          = "jti"
	keySubject      = "sub"
	keyClientID     = "client_id"
	keyIssuedBefore = "issued_before"
)

// Token is what a revocation list is checked against: a verified token's
// claims and the client that presented it.
type Token struct {
	// ID is the jti claim; empty when the token has none.
	ID string
	// Subject is the sub claim; empty when the token has none.
	Subject string
	// ClientID is the client identifier of the CONNECT that carried the
	// token (not the one forward may send to the broker); it may be empty.
	ClientID string
	// IssuedAt is the iat claim; zero when the token has none.
	IssuedAt time.Time
}

// Reason says which entry of the list revokes a token, or that no list
// is in force. It is a short, bounded string fit for logs and metric
// labels.
type Reason string

// The reasons Match and Revoked give.
const (
	// ReasonJTI: the token's jti is listed under "jti".
	ReasonJTI Reason = keyJTI
	// ReasonSubject: the token's sub is listed under "sub".
	ReasonSubject Reason = keySubject
	// ReasonClientID: the client identifier is listed under "client_id".
	ReasonClientID Reason = keyClientID
	// ReasonIssuedBefore: the token's sub has a time under
	// "issued_before", and the token's iat is before it or absent.
	ReasonIssuedBefore Reason = keyIssuedBefore
	// ReasonUnavailable: no list is in force and on_unavailable is deny.
	ReasonUnavailable Reason = "unavailable"
)

// Set is one revocation document, parsed and ready for lookups. It never
// changes, and is safe for concurrent use.
type Set struct {
	jti, subject, clientID stringSet
	// issuedBefore maps a subject to the time, in Unix nanoseconds (see
	// unixNano), before which its tokens are revoked.
	issuedBefore stringSet
}

// Len is the number of entries in the set, each string counted once per
// key it is listed under.
func (s *Set) Len() int {
	return s.jti.len() + s.subject.len() + s.clientID.len() + s.issuedBefore.len()
}

// Match reports whether the set revokes t, and by which entry. It
// allocates nothing.
func (s *Set) Match(t Token) (Reason, bool) {
	if t.ID != "" {
		if _, ok := s.jti.find(t.ID); ok {
			return ReasonJTI, true
		}
	}
	if t.ClientID != "" {
		if _, ok := s.clientID.find(t.ClientID); ok {
			return ReasonClientID, true
		}
	}
	if t.Subject == "" {
		return "", false
	}
	if _, ok := s.subject.find(t.Subject); ok {
		return ReasonSubject, true
	}
	if i, ok := s.issuedBefore.find(t.Subject); ok {
		// A token without iat cannot show it was issued after the time:
		// "log out everywhere" must not spare it.
		if t.IssuedAt.IsZero() || unixNano(t.IssuedAt) < s.issuedBefore.values[i] {
			return ReasonIssuedBefore, true
		}
	}
	return "", false
}

// counts are the entries under each key, for the log.
func (s *Set) counts() (jti, subject, clientID, issuedBefore int) {
	return s.jti.len(), s.subject.len(), s.clientID.len(), s.issuedBefore.len()
}

// Parse reads a revocation document:
//
//	{"jti": ["..."], "sub": ["..."], "client_id": ["..."],
//	 "issued_before": {"SUB": "2025-06-01T12:00:00Z"}}
//
// Every key is optional, and {} revokes nothing. The parse is strict, so
// that a document that does not say what its author meant is refused
// rather than half applied: a key other than these four (it might be a
// revocation this version cannot apply), a key given twice, null, an
// entry that is not a string, an empty string (it would match every token
// without that claim), a time that is not RFC 3339 with a zone, invalid
// UTF-8 and anything after the object are errors, as is a document over
// MaxDocumentSize. A string listed twice counts once.
func Parse(data []byte) (*Set, error) { return parse(data, nil) }

// parse is Parse, paced by p (nil: at full speed).
func parse(data []byte, p *pacer) (*Set, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("document of %d bytes is over the %d-byte limit", len(data), MaxDocumentSize)
	}
	// From a bytes.Buffer, the decoder reads data in place rather than
	// copying it.
	dec := jsontext.NewDecoder(bytes.NewBuffer(data))
	tok, err := dec.ReadToken()
	switch {
	case err == io.EOF:
		return nil, errors.New("empty document, not a JSON object")
	case err != nil:
		return nil, err
	case tok.Kind() != '{':
		return nil, fmt.Errorf("a JSON %s, not an object", kindName(tok.Kind()))
	}
	arena := make([]byte, 0, len(data))
	jti, subject, clientID := setBuilder{arena: &arena, pace: p}, setBuilder{arena: &arena, pace: p}, setBuilder{arena: &arena, pace: p}
	issuedBefore := setBuilder{arena: &arena, withValues: true, pace: p}
	for dec.PeekKind() != '}' {
		name, err := dec.ReadToken()
		if err != nil {
			return nil, err
		}
		switch key := name.String(); key {
		case keyJTI:
			err = readList(dec, key, &jti)
		case keySubject:
			err = readList(dec, key, &subject)
		case keyClientID:
			err = readList(dec, key, &clientID)
		case keyIssuedBefore:
			err = readIssuedBefore(dec, &issuedBefore)
		default:
			err = fmt.Errorf("unknown key %s: the keys are jti, sub, client_id and issued_before", quote(key))
		}
		if err != nil {
			return nil, err
		}
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return &Set{
		jti:          jti.build(),
		subject:      subject.build(),
		clientID:     clientID.build(),
		issuedBefore: issuedBefore.build(),
	}, nil
}

// readList reads the array of strings under key into b.
func readList(dec *jsontext.Decoder, key string, b *setBuilder) error {
	if kind := dec.PeekKind(); kind != '[' {
		return notA(dec, key, "an array of strings")
	}
	if _, err := dec.ReadToken(); err != nil {
		return err
	}
	b.begin()
	for i := 0; dec.PeekKind() != ']'; i++ {
		v, err := dec.ReadValue()
		if err != nil {
			return err
		}
		if v.Kind() != '"' {
			return fmt.Errorf("%s[%d]: a JSON %s, not a string", key, i, kindName(v.Kind()))
		}
		if err := b.appendQuoted(v); err != nil {
			return fmt.Errorf("%s[%d]: %w", key, i, err)
		}
		if len(b.pending()) == 0 {
			return fmt.Errorf("%s[%d]: empty string: it would revoke every token without %s", key, i, key)
		}
		b.end(0)
	}
	_, err := dec.ReadToken()
	return err
}

// readIssuedBefore reads the object of subjects and times into b.
func readIssuedBefore(dec *jsontext.Decoder, b *setBuilder) error {
	if kind := dec.PeekKind(); kind != '{' {
		return notA(dec, keyIssuedBefore, "an object of subjects and times")
	}
	if _, err := dec.ReadToken(); err != nil {
		return err
	}
	b.begin()
	var when []byte
	for dec.PeekKind() != '}' {
		name, err := dec.ReadValue()
		if err != nil {
			return err
		}
		if err := b.appendQuoted(name); err != nil {
			return fmt.Errorf("%s: %w", keyIssuedBefore, err)
		}
		if len(b.pending()) == 0 {
			return fmt.Errorf("%s: an empty subject: it would revoke every token without sub", keyIssuedBefore)
		}
		at := func() string { return keyIssuedBefore + "." + quote(string(b.pending())) }
		v, err := dec.ReadValue()
		if err != nil {
			return err
		}
		if v.Kind() != '"' {
			return fmt.Errorf("%s: a JSON %s, not an RFC 3339 time", at(), kindName(v.Kind()))
		}
		if when, err = jsontext.AppendUnquote(when[:0], v); err != nil {
			return fmt.Errorf("%s: %w", at(), err)
		}
		t, err := time.Parse(time.RFC3339, string(when))
		if err != nil {
			return fmt.Errorf("%s: %s is not an RFC 3339 time such as \"2025-06-01T12:00:00Z\"", at(), quote(string(when)))
		}
		b.end(unixNano(t))
	}
	_, err := dec.ReadToken()
	return err
}

// notA is the error for the value under key, which is not what it must
// be; it reads the value so that a syntax error is reported as such.
func notA(dec *jsontext.Decoder, key, want string) error {
	v, err := dec.ReadValue()
	if err != nil {
		return err
	}
	return fmt.Errorf("%s: a JSON %s, not %s", key, kindName(v.Kind()), want)
}

// kindName names a JSON kind for errors.
func kindName(kind jsontext.Kind) string {
	switch kind {
	case '{':
		return "object"
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

// quote quotes a string of the document for an error, cut short: the
// document may come from a broken or hostile source.
func quote(s string) string {
	const maxLen = 64
	if len(s) > maxLen {
		return fmt.Sprintf("%q...", s[:maxLen])
	}
	return fmt.Sprintf("%q", s)
}

// The times Unix nanoseconds can hold: from 1677 to 2262.
var (
	minUnixNano = time.Unix(0, math.MinInt64)
	maxUnixNano = time.Unix(0, math.MaxInt64)
)

// unixNano is t in Unix nanoseconds, saturated at the ends of int64, so
// that issued_before times take 8 bytes and compare exactly for every
// token issued between 1677 and 2262.
func unixNano(t time.Time) int64 {
	switch {
	case t.Before(minUnixNano):
		return math.MinInt64
	case t.After(maxUnixNano):
		return math.MaxInt64
	}
	return t.UnixNano()
}
