package authn

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestDecodeJSONObject pins what the header and claims decoder accepts,
// refuses, and gives back.
func TestDecodeJSONObject(t *testing.T) {
	tests := []struct {
		name, data string
		want       map[string]any // nil: refused
	}{
		{"claims", `{"sub":"c1","aud":["mqtt"],"exp":1764982800,"admin":true,"x":null}`,
			map[string]any{"sub": "c1", "aud": []any{"mqtt"}, "exp": json.Number("1764982800"), "admin": true, "x": nil}},
		{"empty object", `{}`, map[string]any{}},
		{"empty array", `{"a":[]}`, map[string]any{"a": []any{}}},
		{"whitespace around", " \t\r\n{ \"a\" : 1 }\n ", map[string]any{"a": json.Number("1")}},
		{"a large integer keeps every digit", `{"uid":12345678901234567890123}`, map[string]any{"uid": json.Number("12345678901234567890123")}},
		{"a number beyond float64", `{"exp":1e400}`, map[string]any{"exp": json.Number("1e400")}},
		{"escapes", `{"s":"a\"\\\/\u00e9\ud83d\ude00"}`, map[string]any{"s": "a\"\\/é😀"}},
		{"nested 32 levels", `{"a":` + strings.Repeat("[", 31) + strings.Repeat("]", 31) + `}`, map[string]any{"a": nest(31)}},
		{"nested 33 levels", `{"a":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}`, nil},
		{"duplicate key", `{"sub":"c1","sub":"admin"}`, nil},
		{"duplicate key spelt with an escape", `{"exp":1,"\u0065xp":2}`, nil},
		{"duplicate nested key", `{"acl":{"pub":["a"],"pub":["#"]}}`, nil},
		{"the same key in two objects", `{"a":{"k":1},"b":{"k":2}}`, map[string]any{"a": map[string]any{"k": json.Number("1")}, "b": map[string]any{"k": json.Number("2")}}},
		{"invalid UTF-8", "{\"sub\":\"c\xff\"}", nil},
		{"a lone surrogate", `{"sub":"\ud800"}`, nil},
		{"data after", `{}{}`, nil},
		{"garbage after", `{} x`, nil},
		{"truncated", `{"a":[1,`, nil},
		{"trailing comma", `{"a":1,}`, nil},
		{"an array", `["a"]`, nil},
		{"null", `null`, nil},
		{"a string", `"{}"`, nil},
		{"empty", ``, nil},
		{"only whitespace", "  ", nil},
		{"leading zero", `{"a":01}`, nil},
		{"single quotes", `{'a':1}`, nil},
		{"NaN", `{"a":NaN}`, nil},
		{"a control byte in a string", "{\"a\":\"\x01\"}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeJSONObject([]byte(tt.data))
			if tt.want == nil {
				if err == nil {
					t.Fatalf("decoded %v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestReadHeader pins what a token's header may hold, and which reason a
// bad one gets when it is wrong in more than one way: a header that is not
// strict JSON is malformed whatever it names, then alg, then kid, then crit.
func TestReadHeader(t *testing.T) {
	tests := []struct {
		header, alg, kid string
		reason           RefuseReason // "" for read
	}{
		{`{"alg":"HS256","typ":"JWT"}`, "HS256", "", ""},
		{`{"typ":"JWT","kid":"k1","alg":"ES256","x5c":["a"],"jwk":{"kty":"EC"}}`, "ES256", "k1", ""},
		{`{"\u0061lg":"RS256","kid":"\u006b"}`, "RS256", "k", ""},
		{`{"alg":"HS256","kid":""}`, "HS256", "", ""},
		{`{}`, "", "", ErrTokenMalformed},
		{`{"alg":5}`, "", "", ErrTokenMalformed},
		{`{"alg":null}`, "", "", ErrTokenMalformed},
		{`{"alg":["HS256"]}`, "", "", ErrTokenMalformed},
		{`{"alg":"HS256","kid":7}`, "", "", ErrTokenMalformed},
		{`{"alg":"HS256","kid":null}`, "", "", ErrTokenMalformed},
		{`{"alg":"HS256","alg":"none"}`, "", "", ErrTokenMalformed},
		{`{"alg":"HS256","\u0061lg":"none"}`, "", "", ErrTokenMalformed},
		{`{"alg":"HS256","x":` + strings.Repeat("[", 32) + strings.Repeat("]", 32) + `}`, "", "", ErrTokenMalformed},
		{"{\"alg\":\"HS\xff\"}", "", "", ErrTokenMalformed},
		{`{"alg":"HS256"} x`, "", "", ErrTokenMalformed},
		{`["alg","HS256"]`, "", "", ErrTokenMalformed},
		{`{"alg":"HS256","crit":["exp"]}`, "", "", ErrAlgorithmNotAllowed},
		{`{"alg":"HS256","crit":[]}`, "", "", ErrAlgorithmNotAllowed},
		// Wrong in several ways: the first reason in the order above.
		{`{"crit":["x"],"alg":"HS256","a":1,"a":2}`, "", "", ErrTokenMalformed},
		{`{"crit":["x"],"kid":7}`, "", "", ErrTokenMalformed},
		{`{"crit":["x"],"alg":"HS256","kid":7}`, "", "", ErrTokenMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.header, func(t *testing.T) {
			var jws compactJWS
			err := jws.readHeader([]byte(tt.header))
			if tt.reason != "" {
				if got := ReasonOf(err); got != tt.reason {
					t.Fatalf("readHeader = %v (%s), want %s", err, got, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("readHeader: %v", err)
			}
			if string(jws.alg) != tt.alg || jws.kid != tt.kid {
				t.Errorf("alg %q kid %q, want %q %q", jws.alg, jws.kid, tt.alg, tt.kid)
			}
		})
	}
}

// nest returns n empty arrays, each inside the one before.
func nest(n int) any {
	if n == 1 {
		return []any{}
	}
	return []any{nest(n - 1)}
}

// FuzzDecodeJSONObject checks the decoder against encoding/json: whatever
// it decodes, encoding/json must decode to the same values, so that being
// strict (duplicate keys, invalid UTF-8, depth) is its only difference.
func FuzzDecodeJSONObject(f *testing.F) {
	for _, seed := range []string{
		validClaims, `{"a":{"b":[1,{"c":null}]}}`, `{"a":1,"a":2}`, `{"s":"\u00e9\ud83d\ude00"}`,
		`{"n":-0.5e+3}`, `{}`, `[]`, `null`, `{"a":[`, "{\"a\":\"\xff\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeJSONObject(data)
		if err != nil {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var want map[string]any
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("decoded %q, which encoding/json refuses: %v", data, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: got %#v, encoding/json %#v", data, got, want)
		}
	})
}
