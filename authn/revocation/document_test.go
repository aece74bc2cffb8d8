package revocation

import (
	"encoding/json"
	"hash/maphash"
	"strings"
	"testing"
	"time"
)

// cutoff is the issued_before time of the documents below.
var cutoff = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

const everyKey = `{
	"jti": ["4f1c-stolen", "jti-\u00e9"],
	"sub": ["mallory"],
	"client_id": ["sensor-13"],
	"issued_before": {"alice": "2025-06-01T12:00:00Z", "bob": "2025-06-01T14:00:00.5+02:00"}
}`

func mustParse(t testing.TB, doc string) *Set {
	t.Helper()
	s, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse(%.80q): %v", doc, err)
	}
	return s
}

// TestMatchEveryKey: each key revokes what it says and nothing else.
func TestMatchEveryKey(t *testing.T) {
	s := mustParse(t, everyKey)
	if got := s.Len(); got != 6 {
		t.Errorf("Len = %d, want 6", got)
	}
	for _, tc := range []struct {
		name string
		tok  Token
		want Reason // "" for not revoked
	}{
		{"jti", Token{ID: "4f1c-stolen", Subject: "carol", ClientID: "c", IssuedAt: cutoff}, ReasonJTI},
		{"jti unescaped", Token{ID: "jti-é"}, ReasonJTI},
		{"jti as a subject", Token{Subject: "4f1c-stolen", IssuedAt: cutoff}, ""},
		{"another jti", Token{ID: "4f1c-stolen2", Subject: "carol", IssuedAt: cutoff}, ""},
		{"sub", Token{ID: "fresh", Subject: "mallory", IssuedAt: cutoff.Add(time.Hour)}, ReasonSubject},
		{"sub as a client ID", Token{ClientID: "mallory"}, ""},
		{"client_id", Token{ID: "fresh", Subject: "carol", ClientID: "sensor-13", IssuedAt: cutoff}, ReasonClientID},
		{"client_id as a subject", Token{Subject: "sensor-13", IssuedAt: cutoff}, ""},
		{"issued before", Token{Subject: "alice", IssuedAt: cutoff.Add(-time.Second)}, ReasonIssuedBefore},
		{"issued long before", Token{Subject: "alice", IssuedAt: time.Unix(0, 0)}, ReasonIssuedBefore},
		{"issued at the time", Token{Subject: "alice", IssuedAt: cutoff}, ""},
		{"issued after", Token{Subject: "alice", IssuedAt: cutoff.Add(time.Second)}, ""},
		{"no iat", Token{Subject: "alice"}, ReasonIssuedBefore},
		{"no iat, another subject", Token{Subject: "carol"}, ""},
		{"fraction and zone: just before", Token{Subject: "bob", IssuedAt: cutoff}, ReasonIssuedBefore},
		{"fraction and zone: after", Token{Subject: "bob", IssuedAt: cutoff.Add(time.Second)}, ""},
		{"issued_before is per subject", Token{Subject: "carol", IssuedAt: cutoff.Add(-time.Hour)}, ""},
		{"iat beyond 2262", Token{Subject: "alice", IssuedAt: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, ""},
		{"iat before 1677", Token{Subject: "alice", IssuedAt: time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC)}, ReasonIssuedBefore},
		{"nothing", Token{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, revoked := s.Match(tc.tok)
			if revoked != (tc.want != "") || got != tc.want {
				t.Errorf("Match(%+v) = %q, %v; want %q", tc.tok, got, revoked, tc.want)
			}
		})
	}
}

// TestParseEmptyAndDuplicates: {} revokes nothing; a string listed twice
// counts once, and a subject's first time is kept.
func TestParseEmptyAndDuplicates(t *testing.T) {
	for _, doc := range []string{`{}`, ` { } `, `{"jti": [], "sub": [], "client_id": [], "issued_before": {}}`} {
		if s := mustParse(t, doc); s.Len() != 0 {
			t.Errorf("%s: Len = %d", doc, s.Len())
		}
	}
	s := mustParse(t, `{"jti": ["a", "b", "a", "\u0061", "b"], "sub": ["a"]}`)
	if got := s.Len(); got != 3 {
		t.Errorf("Len = %d, want 3 (a and b under jti, a under sub)", got)
	}
	for _, id := range []string{"a", "b"} {
		if _, ok := s.Match(Token{ID: id}); !ok {
			t.Errorf("jti %q not revoked", id)
		}
	}
}

// TestParseRefuses: every malformed document is refused with an error
// that says where.
func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      string
	}{
		{"empty", ``, "empty document"},
		{"whitespace", " \n", "empty document"},
		{"array", `["a"]`, "a JSON array, not an object"},
		{"null", `null`, "a JSON null, not an object"},
		{"unknown key", `{"jti": [], "kid": ["k1"]}`, `unknown key "kid": the keys are jti, sub, client_id and issued_before`},
		{"key in another case", `{"JTI": ["a"]}`, `unknown key "JTI"`},
		{"key twice", `{"jti": ["a"], "jti": ["b"]}`, "duplicate"},
		{"subject twice", `{"issued_before": {"a": "2025-01-01T00:00:00Z", "\u0061": "2026-01-01T00:00:00Z"}}`, "duplicate"},
		{"null list", `{"jti": null}`, "jti: a JSON null, not an array of strings"},
		{"string for a list", `{"sub": "mallory"}`, "sub: a JSON string, not an array of strings"},
		{"number entry", `{"jti": ["a", 12]}`, "jti[1]: a JSON number, not a string"},
		{"null entry", `{"client_id": [null]}`, "client_id[0]: a JSON null, not a string"},
		{"nested list", `{"jti": [["a"]]}`, "jti[0]: a JSON array, not a string"},
		{"empty jti", `{"jti": ["a", ""]}`, "jti[1]: empty string: it would revoke every token without jti"},
		{"empty client ID", `{"client_id": [""]}`, "client_id[0]: empty string"},
		{"issued_before list", `{"issued_before": ["alice"]}`, "issued_before: a JSON array, not an object of subjects and times"},
		{"empty subject", `{"issued_before": {"": "2025-01-01T00:00:00Z"}}`, "issued_before: an empty subject"},
		{"not a time", `{"issued_before": {"alice": "yesterday"}}`, `issued_before."alice": "yesterday" is not an RFC 3339 time`},
		{"no zone", `{"issued_before": {"alice": "2025-06-01T12:00:00"}}`, `issued_before."alice": "2025-06-01T12:00:00" is not an RFC 3339 time`},
		{"unix seconds", `{"issued_before": {"alice": 1748779200}}`, `issued_before."alice": a JSON number, not an RFC 3339 time`},
		{"invalid UTF-8", "{\"jti\": [\"a\xff\"]}", "invalid UTF-8"},
		{"trailing data", `{} {}`, "data after the JSON object"},
		{"trailing garbage", `{}x`, "data after the JSON object"},
		{"unterminated", `{"jti": ["a"`, "unexpected EOF"},
		{"trailing comma", `{"jti": ["a",]}`, "invalid character"},
		{"HTML error page", "<html><body>502 Bad Gateway</body></html>", "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse accepted it: %d entries", s.Len())
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestParseSizeCap(t *testing.T) {
	doc := make([]byte, MaxDocumentSize+1)
	copy(doc, `{"jti": ["`)
	_, err := Parse(doc)
	if err == nil || !strings.Contains(err.Error(), "over the 67108864-byte limit") {
		t.Errorf("Parse of %d bytes = %v, want the size refused", len(doc), err)
	}
}

// TestMatchCollidingHashes: strings whose hashes are equal are told apart
// by their text, so that a collision never revokes a token by mistake.
func TestMatchCollidingHashes(t *testing.T) {
	s := mustParse(t, `{"jti": ["a", "b", "c", "d"]}`)
	collide := func(with string) {
		h := maphash.String(s.jti.seed, with)
		for i := range s.jti.entries {
			s.jti.entries[i].hashHi, s.jti.entries[i].hashLo = uint32(h>>32), uint32(h)
		}
	}
	collide("e") // every entry has the hash of "e", which is not listed
	if r, ok := s.Match(Token{ID: "e"}); ok {
		t.Errorf("jti e, whose hash every entry has, is revoked (%s)", r)
	}
	collide("c") // a run of four equal hashes, "c" third in it
	if _, ok := s.Match(Token{ID: "c"}); !ok {
		t.Error("jti c, third in a run of equal hashes, is not revoked")
	}
}

// FuzzParse feeds arbitrary bytes to Parse. Nothing may panic; a refusal
// must say why; and a document Parse accepts is a JSON object that
// encoding/json reads too, every string it lists is revoked by its key,
// and the set holds each distinct string once.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		everyKey, `{}`, `{"jti": ["a", "a"]}`, `{"issued_before": {"x": "1970-01-01T00:00:00Z"}}`,
		`{"issued_before": {"x": "9999-12-31T23:59:59.999999999-23:59"}}`, `{"jti": [""]}`, `{"kid": []}`,
		`{"sub": ["\ud800"]}`, `{"client_id": ["\u0000"]}`, `[]`, `{"jti": null}`, `{"jti": ["a"]} x`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("refusal with an empty message")
			}
			return
		}
		var doc struct {
			JTI          []string          `json:"jti"`
			Sub          []string          `json:"sub"`
			ClientID     []string          `json:"client_id"`
			IssuedBefore map[string]string `json:"issued_before"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatalf("Parse accepted what encoding/json refuses: %v", err)
		}
		distinct := func(l []string) map[string]bool {
			m := map[string]bool{}
			for _, e := range l {
				m[e] = true
			}
			return m
		}
		want := len(distinct(doc.JTI)) + len(distinct(doc.Sub)) + len(distinct(doc.ClientID)) + len(doc.IssuedBefore)
		if s.Len() != want {
			t.Fatalf("Len = %d, want %d distinct entries", s.Len(), want)
		}
		for _, id := range doc.JTI {
			if r, ok := s.Match(Token{ID: id}); !ok || r != ReasonJTI {
				t.Fatalf("jti %q: Match = %q, %v", id, r, ok)
			}
		}
		for _, id := range doc.ClientID {
			if r, ok := s.Match(Token{ClientID: id}); !ok || r != ReasonClientID {
				t.Fatalf("client_id %q: Match = %q, %v", id, r, ok)
			}
		}
		for _, sub := range doc.Sub {
			if r, ok := s.Match(Token{Subject: sub}); !ok {
				t.Fatalf("sub %q: Match = %q, %v", sub, r, ok)
			}
		}
		for sub, when := range doc.IssuedBefore {
			at, err := time.Parse(time.RFC3339, when)
			if err != nil {
				t.Fatalf("issued_before %q: Parse accepted %q: %v", sub, when, err)
			}
			if _, ok := s.Match(Token{Subject: sub}); !ok {
				t.Fatalf("issued_before %q: a token without iat is not revoked", sub)
			}
			if at.Before(minUnixNano.Add(time.Second)) || at.After(maxUnixNano) {
				continue // saturated: exact from 1677 to 2262 only
			}
			if r, ok := s.Match(Token{Subject: sub, IssuedAt: at.Add(-time.Second)}); !ok {
				t.Fatalf("issued_before %q: a token issued a second before %s: Match = %q, %v", sub, when, r, ok)
			}
		}
	})
}
