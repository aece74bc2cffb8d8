package authn

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// revocationFile writes doc to a file and returns the list read from it,
// closed at the end of t.
func revocationFile(t *testing.T, doc string) (*revocation.List, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "revoked.json")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	list, err := revocation.New(configs.Revocation{File: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(list.Close)
	return list, path
}

// newRevokingChain is newTestChain checking tokens against list.
func newRevokingChain(t *testing.T, list *revocation.List, auths ...configs.Authenticator) *Chain {
	t.Helper()
	c, err := New(auths, WithClock(func() time.Time { return testNow }), WithRevocation(list))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestChainRevocation: a token that verifies is refused as revoked when
// the list names its jti, its sub or the client ID, or its sub with a
// time after its iat (or it has no iat); any other is accepted, with its
// jti and iat in the identity.
func TestChainRevocation(t *testing.T) {
	const secret = "revocation-test-secret-of-32-bytes!"
	cutoff := testNow.Add(-time.Hour)
	list, path := revocationFile(t, fmt.Sprintf(`{"jti": ["stolen"], "sub": ["mallory"], "client_id": ["sensor-13"],
		"issued_before": {"alice": %q}}`, cutoff.Format(time.RFC3339)))
	chain := newRevokingChain(t, list, hmacAuthenticator(secret))
	exp := testNow.Add(time.Hour).Unix()
	token := func(claims string) string {
		return signToken(t, jwa.HS256, []byte(secret), headerFor(jwa.HS256), claims)
	}

	for _, tc := range []struct {
		name     string
		claims   string
		clientID string
		want     RefuseReason // "" to accept
		detail   string
	}{
		{"jti", fmt.Sprintf(`{"sub":"carol","jti":"stolen","exp":%d}`, exp), "c1", ErrRevoked, "its jti is listed"},
		{"sub", fmt.Sprintf(`{"sub":"mallory","jti":"fresh","exp":%d}`, exp), "c1", ErrRevoked, "its sub is listed"},
		{"client ID", fmt.Sprintf(`{"sub":"carol","exp":%d}`, exp), "sensor-13", ErrRevoked, "the client ID is listed under client_id"},
		{"issued before", fmt.Sprintf(`{"sub":"alice","iat":%d,"exp":%d}`, cutoff.Add(-time.Second).Unix(), exp), "c1", ErrRevoked, "issued_before"},
		{"no iat", fmt.Sprintf(`{"sub":"alice","exp":%d}`, exp), "c1", ErrRevoked, "issued_before"},
		{"issued after", fmt.Sprintf(`{"sub":"alice","iat":%d,"exp":%d}`, cutoff.Unix(), exp), "c1", "", ""},
		{"another subject without iat", fmt.Sprintf(`{"sub":"carol","jti":"fresh","exp":%d}`, exp), "c1", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := passwordRequest(token(tc.claims))
			req.ClientID = tc.clientID
			id, err := chain.Verify(t.Context(), req)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if ReasonOf(err) != tc.want || !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("Verify = %v, %v; want %s saying %q", id, err, tc.want, tc.detail)
			}
			var refusal *RefuseError
			if !errors.As(err, &refusal) || refusal.Authenticator != "jwt" {
				t.Errorf("refusal %v does not name the authenticator", err)
			}
		})
	}

	id, err := chain.Verify(t.Context(), passwordRequest(token(fmt.Sprintf(`{"sub":"alice","jti":"j-7","iat":%d,"exp":%d}`, testNow.Unix(), exp))))
	if err != nil {
		t.Fatal(err)
	}
	if id.TokenID != "j-7" || !id.IssuedAt.Equal(testNow) || id.Subject != "alice" {
		t.Errorf("identity %+v, want jti j-7, iat %s, sub alice", id, testNow)
	}
	if got, ok := id.RevocationToken("c1"); !ok || got != (revocation.Token{ID: "j-7", Subject: "alice", ClientID: "c1", IssuedAt: testNow}) {
		t.Errorf("RevocationToken = %+v, %v; want jti j-7, sub alice, client c1, iat %s", got, ok, testNow)
	}

	// The list changes: a token accepted a moment ago (and remembered as
	// verified) is refused at its next connection.
	if err := os.WriteFile(path, []byte(`{"jti": ["j-7"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := list.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := chain.Verify(t.Context(), passwordRequest(token(fmt.Sprintf(`{"sub":"alice","jti":"j-7","iat":%d,"exp":%d}`, testNow.Unix(), exp)))); ReasonOf(err) != ErrRevoked {
		t.Errorf("after the list changed: Verify = %v, want revoked", err)
	}
	live, _ := id.RevocationToken("c1")
	if r, ok := list.Matches(live); !ok || r != revocation.ReasonJTI {
		t.Errorf("Matches(the live session's token) = %q, %v; want jti", r, ok)
	}
}

// TestChainRevocationOrder: a token that does not verify is refused for
// that, not as revoked, so that a forged token listed under jti says
// nothing of the list; and Explain reports the revocation as the jwt
// authenticator's refusal.
func TestChainRevocationOrder(t *testing.T) {
	const secret = "revocation-test-secret-of-32-bytes!"
	list, _ := revocationFile(t, `{"jti": ["stolen"]}`)
	chain := newRevokingChain(t, list, hmacAuthenticator(secret))
	claims := fmt.Sprintf(`{"sub":"carol","jti":"stolen","exp":%d}`, testNow.Add(time.Hour).Unix())
	forged := signToken(t, jwa.HS256, []byte("another-secret-of-32-bytes-length!!"), headerFor(jwa.HS256), claims)
	if _, err := chain.Verify(t.Context(), passwordRequest(forged)); ReasonOf(err) != ErrBadSignature {
		t.Errorf("forged and listed: Verify = %v, want bad_signature", err)
	}
	expired := signToken(t, jwa.HS256, []byte(secret), headerFor(jwa.HS256), fmt.Sprintf(`{"jti":"stolen","exp":%d}`, testNow.Add(-time.Hour).Unix()))
	if _, err := chain.Verify(t.Context(), passwordRequest(expired)); ReasonOf(err) != ErrTokenExpired {
		t.Errorf("expired and listed: Verify = %v, want token_expired", err)
	}
	steps := chain.Explain(t.Context(), passwordRequest(signToken(t, jwa.HS256, []byte(secret), headerFor(jwa.HS256), claims)))
	if len(steps) != 1 || steps[0].Outcome != OutcomeRefuse || ReasonOf(steps[0].Err) != ErrRevoked {
		t.Errorf("Explain = %+v, want one refusal, revoked", steps)
	}
}

// TestChainRevocationUnavailable: with no list in force, deny refuses
// every token with revocation_unavailable and allow accepts it.
func TestChainRevocationUnavailable(t *testing.T) {
	const secret = "revocation-test-secret-of-32-bytes!"
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	token := signToken(t, jwa.HS256, []byte(secret), headerFor(jwa.HS256), validClaims)
	for _, tc := range []struct {
		mode string
		want RefuseReason
	}{{configs.RevocationDeny, ErrRevocationUnavailable}, {configs.RevocationAllow, ""}} {
		t.Run(tc.mode, func(t *testing.T) {
			list, err := revocation.New(configs.Revocation{URL: down.URL, OnUnavailable: tc.mode})
			if err != nil {
				t.Fatal(err)
			}
			defer list.Close()
			select {
			case <-list.FirstRefreshDone():
			case <-time.After(20 * time.Second):
				t.Fatal("no first fetch")
			}
			chain := newRevokingChain(t, list, hmacAuthenticator(secret))
			_, err = chain.Verify(t.Context(), passwordRequest(token))
			if ReasonOf(err) != tc.want {
				t.Errorf("Verify = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestChainRevocationSkipsCertificates: a client a certificate
// authenticator accepts carries no token, and the list is not applied to
// it, not even by client ID, neither at its CONNECT nor to its session
// (RevocationToken).
func TestChainRevocationSkipsCertificates(t *testing.T) {
	list, _ := revocationFile(t, `{"client_id": ["device-1"], "sub": ["device-1"]}`)
	chain := newRevokingChain(t, list, configs.Authenticator{Mechanism: configs.MechanismCertificate})
	id, err := chain.Verify(t.Context(), Request{ClientID: "device-1", CertVerified: true, CertCommonName: "device-1"})
	if err != nil || id.Subject != "device-1" {
		t.Errorf("Verify = %+v, %v; want the certificate accepted", id, err)
	}
	// Nor to its session once connected, when a new list arrives.
	if token, ok := id.RevocationToken("device-1"); ok {
		t.Errorf("RevocationToken of a certificate's identity = %+v, true; want false", token)
	}
}
