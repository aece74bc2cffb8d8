package authn

import (
	"fmt"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

const (
	devicesSecret = "devices-secret-of-at-least-32-bytes!"
	usersSecret   = "users-secret-of-at-least-32-bytes!!!"
)

// methodChain is the chain of the tests below: devices take tokens in the
// password or under the default method JWT; users in the user name or
// under JWT-users, bound to the client ID by a claim but not to their sub.
func methodChain(t *testing.T, opts ...Option) *Chain {
	t.Helper()
	devices := hmacAuthenticator(devicesSecret)
	devices.Name = "devices"
	devices.OnMissingJWT = "ignore"
	users := hmacAuthenticator(usersSecret)
	users.Name, users.From, users.AuthMethod = "users", "username", "JWT-users"
	users.VerifyClaims = map[string]string{"cid": "${clientid}"}
	users.Reauth.SameSubject = new(false)
	c, err := New([]configs.Authenticator{devices, users}, append([]Option{WithClock(func() time.Time { return testNow })}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// hs256 signs claims, a JSON object, with secret.
func hs256(t *testing.T, secret, claims string) []byte {
	t.Helper()
	return []byte(signToken(t, jwa.HS256, []byte(secret), headerFor(jwa.HS256), claims))
}

// expiring are claims with sub and an exp d after testNow.
func expiring(sub string, d time.Duration, more string) string {
	return fmt.Sprintf(`{"sub":%q,"exp":%d%s}`, sub, testNow.Add(d).Unix(), more)
}

// TestAuthMethod: a CONNECT that names an Authentication Method is judged
// by the authenticators that take it, which read its token from the
// Authentication Data whatever their from field; the others, certificate
// authenticators included, pass it on; a method no authenticator takes is
// refused before any is asked.
func TestAuthMethod(t *testing.T) {
	deviceToken := hs256(t, devicesSecret, expiring("c1", time.Hour, ""))
	userToken := hs256(t, usersSecret, expiring("alice", time.Hour, `,"cid":"c1"`))
	tests := []struct {
		name              string
		req               Request
		want              RefuseReason
		wantAuthenticator string
		wantSteps         []string // "authenticator outcome"; nil is not checked
	}{
		{name: "the default method, the token in the Authentication Data",
			req:               Request{ClientID: "c1", AuthMethod: "JWT", AuthData: deviceToken},
			wantAuthenticator: "devices", wantSteps: []string{"devices accept"}},
		{name: "the password is not read under a method",
			req:               Request{ClientID: "c1", AuthMethod: "JWT", AuthData: deviceToken, Password: []byte("not a token"), HasPassword: true},
			wantAuthenticator: "devices"},
		{name: "a configured method, whose authenticator reads the user name otherwise",
			req:               Request{ClientID: "c1", AuthMethod: "JWT-users", AuthData: userToken, Username: "alice", HasUsername: true},
			wantAuthenticator: "users", wantSteps: []string{"devices pass", "users accept"}},
		{name: "a method no authenticator takes",
			req:  Request{ClientID: "c1", AuthMethod: "SCRAM-SHA-1", AuthData: deviceToken},
			want: ErrBadAuthMethod, wantSteps: []string{}},
		{name: "a method's case matters",
			req:  Request{ClientID: "c1", AuthMethod: "jwt", AuthData: deviceToken},
			want: ErrBadAuthMethod},
		{name: "a method without Authentication Data",
			req:  Request{ClientID: "c1", AuthMethod: "JWT-users", Username: string(userToken), HasUsername: true},
			want: ErrTokenMissing, wantSteps: []string{"devices pass", "users refuse"}},
		{name: "a token under the other authenticator's method",
			req:  Request{ClientID: "c1", AuthMethod: "JWT", AuthData: userToken},
			want: ErrBadSignature, wantSteps: []string{"devices refuse"}},
		{name: "without a method, the password as before",
			req:               passwordRequest(string(deviceToken)),
			wantAuthenticator: "devices"},
	}
	chain := methodChain(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := chain.Verify(t.Context(), tc.req)
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %q (%v), want %q", got, err, tc.want)
			}
			wantMethod := tc.req.AuthMethod
			if err != nil {
				wantMethod = ""
			}
			if id.Authenticator != tc.wantAuthenticator || id.AuthMethod != wantMethod {
				t.Errorf("accepted by %q under %q, want %q under %q", id.Authenticator, id.AuthMethod, tc.wantAuthenticator, wantMethod)
			}
			if tc.wantSteps == nil {
				return
			}
			steps := []string{}
			for _, s := range chain.Explain(t.Context(), tc.req) {
				steps = append(steps, s.Authenticator+" "+s.Outcome)
			}
			if fmt.Sprint(steps) != fmt.Sprint(tc.wantSteps) {
				t.Errorf("steps %q, want %q", steps, tc.wantSteps)
			}
		})
	}

	t.Run("a certificate authenticator passes a client with a method", func(t *testing.T) {
		device := hmacAuthenticator(devicesSecret)
		chain := newTestChain(t, configs.Authenticator{Name: "certs", Mechanism: configs.MechanismCertificate}, device)
		req := Request{ClientID: "c1", CertVerified: true, CertCommonName: "c1", AuthMethod: "JWT"}
		if _, err := chain.Verify(t.Context(), req); ReasonOf(err) != ErrTokenMissing {
			t.Errorf("without a token: %v, want token_missing from the jwt authenticator", err)
		}
		req.AuthData = deviceToken
		if id, err := chain.Verify(t.Context(), req); err != nil || id.Authenticator != "jwt#2" || id.AuthMethod != "JWT" {
			t.Errorf("with a token: %+v, %v; want accepted by jwt#2 under JWT", id, err)
		}
	})
}

// TestReauthenticate: a re-authentication's token is verified by the
// authenticator that accepted the session, under its method, against the
// session's request, with the session's sub unless reauth.same_subject is
// false; the new identity carries the new expiry and claims.
func TestReauthenticate(t *testing.T) {
	chain := methodChain(t)
	device, err := chain.Verify(t.Context(), Request{ClientID: "c1", AuthMethod: "JWT", AuthData: hs256(t, devicesSecret, expiring("c1", time.Minute, ""))})
	if err != nil {
		t.Fatal(err)
	}
	userReq := Request{ClientID: "c1", AuthMethod: "JWT-users", AuthData: hs256(t, usersSecret, expiring("alice", time.Minute, `,"cid":"c1"`))}
	user, err := chain.Verify(t.Context(), userReq)
	if err != nil {
		t.Fatal(err)
	}
	byPassword, err := chain.Verify(t.Context(), passwordRequest(string(hs256(t, devicesSecret, expiring("c1", time.Minute, "")))))
	if err != nil {
		t.Fatal(err)
	}
	deviceReq := func(token []byte) Request { return Request{ClientID: "c1", AuthMethod: "JWT", AuthData: token} }
	userReauth := func(token []byte) Request { r := userReq; r.AuthData = token; return r }

	tests := []struct {
		name  string
		first Identity
		req   Request
		want  RefuseReason
		// wantSub and wantExpiry are the new identity's when accepted.
		wantSub    string
		wantExpiry time.Duration
		wantClaim  string // the claim "role" of the new token
	}{
		{name: "the same sub, a later exp and new claims", first: device,
			req:     deviceReq(hs256(t, devicesSecret, expiring("c1", 2*time.Hour, `,"role":"admin"`))),
			wantSub: "c1", wantExpiry: 2 * time.Hour, wantClaim: "admin"},
		{name: "another sub", first: device,
			req:  deviceReq(hs256(t, devicesSecret, expiring("c2", 2*time.Hour, ""))),
			want: ErrClaimMismatch},
		{name: "a token without sub, the session's had one", first: device,
			req:  deviceReq(hs256(t, devicesSecret, fmt.Sprintf(`{"exp":%d}`, testNow.Add(time.Hour).Unix()))),
			want: ErrClaimMismatch},
		{name: "another sub, with same_subject false", first: user,
			req:     userReauth(hs256(t, usersSecret, expiring("bob", time.Hour, `,"cid":"c1"`))),
			wantSub: "bob", wantExpiry: time.Hour},
		{name: "verify_claims still bind the session's client ID", first: user,
			req:  userReauth(hs256(t, usersSecret, expiring("alice", time.Hour, `,"cid":"c2"`))),
			want: ErrClaimMismatch},
		{name: "a token the other authenticator would accept", first: device,
			req:  deviceReq(hs256(t, usersSecret, expiring("c1", time.Hour, `,"cid":"c1"`))),
			want: ErrBadSignature},
		{name: "expired", first: device,
			req:  deviceReq(hs256(t, devicesSecret, expiring("c1", -time.Second, ""))),
			want: ErrTokenExpired},
		{name: "a bad signature", first: device,
			req:  deviceReq(append(hs256(t, devicesSecret, expiring("c1", time.Hour, "")), 'A')),
			want: ErrBadSignature},
		{name: "no token", first: device,
			req:  deviceReq(nil),
			want: ErrTokenMissing},
		{name: "under another method than the session's", first: device,
			req:  Request{ClientID: "c1", AuthMethod: "JWT-users", AuthData: hs256(t, devicesSecret, expiring("c1", time.Hour, ""))},
			want: ErrBadAuthMethod},
		{name: "a session that authenticated by its password", first: byPassword,
			req:  deviceReq(hs256(t, devicesSecret, expiring("c1", time.Hour, ""))),
			want: ErrBadAuthMethod},
		{name: "a session whose authenticator is gone", first: Identity{Authenticator: "removed", AuthMethod: "JWT", Subject: "c1"},
			req:  deviceReq(hs256(t, devicesSecret, expiring("c1", time.Hour, ""))),
			want: ErrNoAuthenticatorAccepted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := chain.Reauthenticate(t.Context(), tc.first, tc.req)
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %q (%v), want %q", got, err, tc.want)
			}
			if err != nil {
				if _, ok := err.(*RefuseError); !ok {
					t.Errorf("error %T, want a *RefuseError", err)
				}
				return
			}
			if id.Authenticator != tc.first.Authenticator || id.AuthMethod != tc.first.AuthMethod || id.Subject != tc.wantSub ||
				!id.Expiry.Equal(testNow.Add(tc.wantExpiry)) || !id.DisconnectAt.Equal(id.Expiry) {
				t.Errorf("identity %+v, want %s under %s, sub %q, expiry and disconnect at now+%s",
					id, tc.first.Authenticator, tc.first.AuthMethod, tc.wantSub, tc.wantExpiry)
			}
			if role, _ := id.Claims["role"].(string); role != tc.wantClaim {
				t.Errorf("claim role %q, want %q", role, tc.wantClaim)
			}
		})
	}

	t.Run("a new chain of the same authenticators, after a reload", func(t *testing.T) {
		reloaded := methodChain(t)
		id, err := reloaded.Reauthenticate(t.Context(), device, deviceReq(hs256(t, devicesSecret, expiring("c1", time.Hour, ""))))
		if err != nil || id.Authenticator != "devices" {
			t.Errorf("%+v, %v; want accepted by devices", id, err)
		}
	})

	t.Run("a revoked token", func(t *testing.T) {
		list, _ := revocationFile(t, `{"jti": ["stolen"]}`)
		revoking := methodChain(t, WithRevocation(list))
		_, err := revoking.Reauthenticate(t.Context(), device, deviceReq(hs256(t, devicesSecret, expiring("c1", time.Hour, `,"jti":"stolen"`))))
		if ReasonOf(err) != ErrRevoked {
			t.Errorf("%v, want revoked", err)
		}
	})
}
