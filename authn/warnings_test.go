package authn

import (
	"reflect"
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
