package authn

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// warningFields renders w's fields as a log would.
func warningFields(w Warning) map[string]any {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range w.Fields {
		f.AddTo(enc)
	}
	return enc.Fields
}

func TestWarnings(t *testing.T) {
	jwks := func(refresh time.Duration) configs.Authenticator {
		a := jwksConfig("https://keys.example/jwks")
		a.RefreshInterval = configs.Duration(refresh)
		return a
	}
	hmac := func(secret string, base64 bool) configs.Authenticator {
		a := hmacAuthenticator(secret)
		a.SecretBase64Encoded = base64
		return a
	}
	const (
		exampleSecret = "authenticator uses a secret published in documentation; anyone can mint tokens for it"
		shortSecret   = "HMAC secret is shorter than the hash output of algorithms it verifies (RFC 7518 section 3.2: 32 bytes for HS256, 48 for HS384, 64 for HS512)"
	)
	type warning struct {
		authenticator, message string
		fields                 map[string]any
	}
	tests := []struct {
		name  string
		auths []configs.Authenticator
		want  []warning
	}{
		{"refresh_interval under 10s", []configs.Authenticator{jwks(2 * time.Second)},
			[]warning{{"jwt", "refresh_interval is under the minimum, which is used instead", map[string]any{"configured": "2s", "effective": "10s"}}}},
		{"refresh_interval of 10s", []configs.Authenticator{jwks(10 * time.Second)}, nil},
		{"secret from documentation", []configs.Authenticator{hmac("emqxsecret", false)}, []warning{
			{"jwt", exampleSecret, map[string]any{}},
			{"jwt", shortSecret, map[string]any{"secret_bytes": int64(10), "short_for": []any{"HS256", "HS384", "HS512"}}},
		}},
		{"secret of 31 bytes", []configs.Authenticator{hmac(strings.Repeat("s", 31), false)},
			[]warning{{"jwt", shortSecret, map[string]any{"secret_bytes": int64(31), "short_for": []any{"HS256", "HS384", "HS512"}}}}},
		{"secret of 32 bytes", []configs.Authenticator{hmac(strings.Repeat("s", 32), false)},
			[]warning{{"jwt", shortSecret, map[string]any{"secret_bytes": int64(32), "short_for": []any{"HS384", "HS512"}}}}},
		{"secret of 48 bytes, base64", []configs.Authenticator{hmac(base64.StdEncoding.EncodeToString(make([]byte, 48)), true)},
			[]warning{{"jwt", shortSecret, map[string]any{"secret_bytes": int64(48), "short_for": []any{"HS512"}}}}},
		{"secret of 64 bytes", []configs.Authenticator{hmac(strings.Repeat("s", 64), false)}, nil},
		{"64 base64 characters are 48 bytes", []configs.Authenticator{hmac(strings.Repeat("A", 64), true)},
			[]warning{{"jwt", shortSecret, map[string]any{"secret_bytes": int64(48), "short_for": []any{"HS512"}}}}},
		{"a secret New refuses is New's to report", []configs.Authenticator{hmac("%%%", true)}, nil},
		{"refresh_interval not set", []configs.Authenticator{jwks(0)}, nil},
		{"second authenticator named by default", []configs.Authenticator{jwks(0), jwks(time.Second)},
			[]warning{{"jwt#2", "refresh_interval is under the minimum, which is used instead", map[string]any{"configured": "1s", "effective": "10s"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []warning
			for _, w := range Warnings(tt.auths) {
				got = append(got, warning{w.Authenticator, w.Message, warningFields(w)})
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Warnings = %+v, want %+v", got, tt.want)
			}
		})
	}
}
