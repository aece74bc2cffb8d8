package authn

import (
	"context"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// TestDisconnectAt: a token with exp ends its session at exp plus the
// leeway, unless disconnect_after_expire is off; one without exp never.
func TestDisconnectAt(t *testing.T) {
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
	inAnHour := time.Now().Add(time.Hour).Truncate(time.Second)
	aMinuteAgo := time.Now().Add(-time.Minute).Truncate(time.Second)
	withExp := sign(jwt.NewBuilder().Subject("a").Expiration(inAnHour))
	expired := sign(jwt.NewBuilder().Subject("a").Expiration(aMinuteAgo))
	noExp := sign(jwt.NewBuilder().Subject("a"))
	for _, tc := range []struct {
		name    string
		setting *bool
		leeway  time.Duration
		token   []byte
		want    time.Time
	}{
		{"default, exp", nil, 0, withExp, inAnHour},
		{"default, exp, leeway", nil, 30 * time.Second, withExp, inAnHour.Add(30 * time.Second)},
		// Let in by the leeway: the session lasts as long as the leeway
		// lets the token in, not until a moment already past.
		{"default, exp past, within leeway", nil, 5 * time.Minute, expired, aMinuteAgo.Add(5 * time.Minute)},
		{"default, no exp", nil, 0, noExp, time.Time{}},
		{"off, exp", &off, 0, withExp, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New([]configs.Authenticator{{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based",
				Secret: "expiry-secret", DisconnectAfterExpire: tc.setting, Leeway: configs.Duration(tc.leeway)}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			id, err := c.Verify(context.Background(), Request{Password: tc.token, HasPassword: true})
			if err != nil {
				t.Fatal(err)
			}
			if !id.DisconnectAt.Equal(tc.want) {
				t.Errorf("DisconnectAt = %v, want %v", id.DisconnectAt, tc.want)
			}
		})
	}
}
