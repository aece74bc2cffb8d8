package authn

import (
	"context"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

func TestDisconnectAtExpiry(t *testing.T) {
	off := false
	sign := func(b *jwt.Builder) []byte {
		tok, err := b.Build()
		if err != nil {
			t.Fatal(err)
		}
		signed, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256, []byte("expiry-secret")))
		if err != nil {
			t.Fatal(err)
		}
		return signed
	}
	withExp := sign(jwt.NewBuilder().Subject("a").Expiration(time.Now().Add(time.Hour)))
	noExp := sign(jwt.NewBuilder().Subject("a"))
	for _, tc := range []struct {
		name    string
		setting *bool
		token   []byte
		want    bool
	}{
		{"default, exp", nil, withExp, true},
		{"default, no exp", nil, noExp, false},
		{"off, exp", &off, withExp, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New([]configs.Authenticator{{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based",
				Secret: "expiry-secret", DisconnectAfterExpire: tc.setting}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			id, err := c.Verify(context.Background(), Request{Password: tc.token, HasPassword: true})
			if err != nil {
				t.Fatal(err)
			}
			if id.DisconnectAtExpiry != tc.want {
				t.Errorf("DisconnectAtExpiry = %v, want %v", id.DisconnectAtExpiry, tc.want)
			}
		})
	}
}
