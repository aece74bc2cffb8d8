package authn

import (
	"reflect"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

func TestChainStatus(t *testing.T) {
	verifyNoJWKSLeaks(t)
	good := newJWKSTestServer(t, false)
	good.serveKeys(t, jwksTestECJWK(t, "k1"))
	down := newJWKSTestServer(t, false)
	down.serve(jwksServeError)

	static := hmacAuthenticator("status-test-secret")
	static.Name = "static"
	fromGood, fromDown := jwksConfig(good.URL), jwksConfig(down.URL)
	fromGood.Name, fromDown.Name = "good", "down"
	clock := newJWKSTestClock()
	chain, err := New([]configs.Authenticator{static, fromGood, fromDown}, WithClock(clock.Now))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(chain.Close)
	for _, l := range chain.links {
		if p, ok := l.(*authenticator).keys.(*jwksProvider); ok {
			waitJWKSFetch(t, p)
		}
	}

	steps := []struct {
		name    string
		advance time.Duration
		want    []KeySetStatus
	}{
		{name: "after the first fetches", want: []KeySetStatus{
			{Authenticator: "good", Loaded: true, Refreshes: 1},
			{Authenticator: "down", ConsecutiveFailures: 1, Failures: 1},
		}},
		{name: "a minute later", advance: time.Minute, want: []KeySetStatus{
			{Authenticator: "good", Loaded: true, Age: time.Minute, Refreshes: 1},
			{Authenticator: "down", ConsecutiveFailures: 1, Failures: 1},
		}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			clock.Advance(step.advance)
			if got := chain.Status(); !reflect.DeepEqual(got, step.want) {
				t.Errorf("Status() = %+v\nwant       %+v", got, step.want)
			}
		})
	}
	if got := (&Chain{}).Status(); len(got) != 0 {
		t.Errorf("zero Chain's Status() = %+v, want none", got)
	}
}
