package filter

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// recordingLink is a Link that keeps what it is given, and signals each
// call.
type recordingLink struct {
	mu       sync.Mutex
	toClient [][]byte
	ends     []*End
	called   chan struct{}
}

func newRecordingLink() *recordingLink { return &recordingLink{called: make(chan struct{}, 16)} }

func (l *recordingLink) ToClient(b []byte) {
	l.mu.Lock()
	l.toClient = append(l.toClient, b)
	l.mu.Unlock()
	l.called <- struct{}{}
}

func (l *recordingLink) End(e *End) {
	l.mu.Lock()
	l.ends = append(l.ends, e)
	l.mu.Unlock()
	l.called <- struct{}{}
}

// wait waits for the link's next call.
func (l *recordingLink) wait(t *testing.T) {
	t.Helper()
	select {
	case <-l.called:
	case <-time.After(10 * time.Second):
		t.Fatal("the Link was not called")
	}
}

// got returns what the link was given.
func (l *recordingLink) got() ([][]byte, []*End) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.toClient...), append([]*End(nil), l.ends...)
}

// laterHook is a Reauthenticate hook that keeps each answer function, for
// the test to answer when it likes, and the tokens it was handed.
type laterHook struct {
	mu      sync.Mutex
	tokens  []string
	answers []func(Reauth)
}

func (h *laterHook) reauthenticate(token []byte, answer func(Reauth)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tokens = append(h.tokens, string(token))
	h.answers = append(h.answers, answer)
}

// last returns the last answer function the hook was handed.
func (h *laterHook) last(t *testing.T) func(Reauth) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.answers) == 0 {
		t.Fatal("the hook was not called")
	}
	return h.answers[len(h.answers)-1]
}

// methodSession is an MQTT 5 session under the method "JWT" with
// testRules, answered through link, its broker's CONNACK filtered.
func methodSession(t *testing.T, hook func([]byte, func(Reauth)), link Link) *Session {
	t.Helper()
	s := New(Config{Version: v5, Policy: testPolicy(t), AuthMethod: "JWT", Reauthenticate: hook, Link: link})
	t.Cleanup(s.Release)
	if fwd, _, err := s.Filter(FromBroker, connack(v5), nil, nil); err != nil || !bytes.Equal(fwd, connackMethod) {
		t.Fatalf("CONNACK: % x, %v; want % x", fwd, err, connackMethod)
	}
	return s
}

// filterClient filters in from the client and fails the test on an error.
func filterClient(t *testing.T, s *Session, in []byte) (fwd, back []byte) {
	t.Helper()
	fwd, back, err := s.Filter(FromClient, in, nil, nil)
	if err != nil {
		t.Fatalf("the session ended: %v", err)
	}
	return fwd, back
}

// TestReauthAnsweredLater: a hook that answers after its Filter call, from
// another goroutine: the AUTH is not forwarded, the client's packets flow
// under the old rules meanwhile, the success goes to the client through
// the Link, and the next packet is judged by the new rules; the client may
// then re-authenticate again.
func TestReauthAnsweredLater(t *testing.T) {
	hook := &laterHook{}
	link := newRecordingLink()
	s := methodSession(t, hook.reauthenticate, link)

	fwd, back := filterClient(t, s, cat(auth(0x19, "JWT", []byte("the new token")), publish(v5, pub{topic: "ok/a", qos: 1, id: 1})))
	if want := publish(v5, pub{topic: "ok/a", qos: 1, id: 1}); !bytes.Equal(fwd, want) || len(back) != 0 {
		t.Fatalf("while the answer is awaited: fwd % x, back % x; want the PUBLISH alone, and nothing back", fwd, back)
	}
	if fmt.Sprint(hook.tokens) != "[the new token]" {
		t.Errorf("the hook got %q", hook.tokens)
	}

	go hook.last(t)(Reauth{Policy: compile(t, reauthRules)})
	link.wait(t)
	toClient, ends := link.got()
	if len(toClient) != 1 || !bytes.Equal(toClient[0], authSuccess) || len(ends) != 0 {
		t.Fatalf("the Link got % x and %v; want the AUTH success alone", toClient, ends)
	}
	fwd, back = filterClient(t, s, cat(publish(v5, pub{topic: "ok/a", qos: 1, id: 2}), publish(v5, pub{topic: "new/x", qos: 1, id: 3})))
	if want := publish(v5, pub{topic: "new/x", qos: 1, id: 3}); !bytes.Equal(fwd, want) || !bytes.Equal(back, ack(v5, 0x40, 2, 0x87)) {
		t.Errorf("after the answer: fwd % x, back % x; want new/x forwarded and ok/a refused", fwd, back)
	}

	filterClient(t, s, auth(0x19, "JWT", []byte("a third token")))
	if len(hook.answers) != 2 {
		t.Fatalf("a second re-authentication did not reach the hook")
	}
}

// TestReauthRefusedLater: a refusal that comes after its Filter call ends
// the session through Link.End with DISCONNECT 0x87, its cause kept, and
// every later Filter call of either direction returns that end.
func TestReauthRefusedLater(t *testing.T) {
	hook := &laterHook{}
	link := newRecordingLink()
	s := methodSession(t, hook.reauthenticate, link)
	filterClient(t, s, auth(0x19, "JWT", []byte(tokenForged)))

	go hook.last(t)(Reauth{Err: errForged})
	link.wait(t)
	toClient, ends := link.got()
	if len(toClient) != 0 || len(ends) != 1 {
		t.Fatalf("the Link got % x and %v; want one End", toClient, ends)
	}
	end := ends[0]
	if end.Code != packets.NotAuthorized || end.Reason != "not_authorized" || !bytes.Equal(end.ToClient, unhex("e0 02 87 00")) {
		t.Errorf("End %v %q % x; want not authorized, DISCONNECT 0x87", end.Code, end.Reason, end.ToClient)
	}
	if !errors.Is(end, ErrReauthRefused) || !errors.Is(end, errForged) {
		t.Errorf("End %v does not wrap ErrReauthRefused and the hook's error", end)
	}
	for _, dir := range []int{FromClient, FromBroker} {
		fwd, back, err := s.Filter(dir, publish(v5, pub{topic: "ok/a"}), []byte("f"), []byte("b"))
		if err != end || string(fwd) != "f" || string(back) != "b" {
			t.Errorf("direction %d after the refusal: % x, % x, %v; want the End, outputs as given", dir, fwd, back, err)
		}
	}
}

// TestReauthAnsweredWhileTheHookRuns: an answer given from another
// goroutine before the hook returns comes back in the Filter call's own
// outputs, never through the Link.
func TestReauthAnsweredWhileTheHookRuns(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer Reauth
	}{
		{"success", Reauth{Policy: compile(t, reauthRules)}},
		{"refusal", Reauth{Err: errForged}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook := func(_ []byte, answer func(Reauth)) {
				done := make(chan struct{})
				go func() {
					answer(tc.answer)
					close(done)
				}()
				<-done
			}
			s := methodSession(t, hook, noLink{t})
			fwd, back, err := s.Filter(FromClient, cat(auth(0x19, "JWT", []byte("t")), publish(v5, pub{topic: "new/x"})), nil, nil)
			if tc.answer.Err == nil {
				if err != nil || !bytes.Equal(back, authSuccess) || !bytes.Equal(fwd, publish(v5, pub{topic: "new/x"})) {
					t.Errorf("fwd % x, back % x, %v; want new/x forwarded under the new rules and AUTH success back", fwd, back, err)
				}
				return
			}
			var end *End
			if !errors.As(err, &end) || end.Code != packets.NotAuthorized || !errors.Is(err, errForged) || len(fwd) != 0 {
				t.Errorf("fwd % x, %v; want nothing forwarded and an End with 0x87", fwd, err)
			}
		})
	}
}

// TestReauthAnswerIgnored: a second answer, and an answer after Release,
// reach neither the client nor the session's rules.
func TestReauthAnswerIgnored(t *testing.T) {
	t.Run("answered twice", func(t *testing.T) {
		hook := &laterHook{}
		link := newRecordingLink()
		s := methodSession(t, hook.reauthenticate, link)
		filterClient(t, s, auth(0x19, "JWT", []byte("t")))
		answer := hook.last(t)
		answer(Reauth{})
		answer(Reauth{Err: errForged})
		answer(Reauth{Policy: compile(t, reauthRules)})
		toClient, ends := link.got()
		if len(toClient) != 1 || len(ends) != 0 {
			t.Errorf("the Link got % x and %v; want the first answer alone", toClient, ends)
		}
		if fwd, _ := filterClient(t, s, publish(v5, pub{topic: "ok/a"})); len(fwd) == 0 {
			t.Errorf("a later answer changed the rules")
		}
	})
	t.Run("after Release", func(t *testing.T) {
		hook := &laterHook{}
		link := newRecordingLink()
		s := New(Config{Version: v5, AuthMethod: "JWT", Reauthenticate: hook.reauthenticate, Link: link})
		s.Filter(FromBroker, connack(v5), nil, nil)
		filterClient(t, s, auth(0x19, "JWT", []byte("t")))
		s.Release()
		hook.last(t)(Reauth{Err: errForged})
		if toClient, ends := link.got(); len(toClient)+len(ends) != 0 {
			t.Errorf("the Link got % x and %v after Release", toClient, ends)
		}
	})
}

// TestReauthNotServed: a session under a method without a hook or a Link
// refuses each re-authentication, and one whose method no AUTH can carry
// ends at its first Filter call, rather than either crashing.
func TestReauthNotServed(t *testing.T) {
	for _, cfg := range []Config{
		{Version: v5, AuthMethod: "JWT"},
		{Version: v5, AuthMethod: "JWT", Reauthenticate: testReauthenticate(t)},
		{Version: v5, AuthMethod: "JWT", Link: newRecordingLink()},
	} {
		s := New(cfg)
		s.Filter(FromBroker, connack(v5), nil, nil)
		_, _, err := s.Filter(FromClient, auth(0x19, "JWT", []byte(tokenSame)), nil, nil)
		var end *End
		if !errors.As(err, &end) || end.Code != packets.NotAuthorized || !strings.Contains(err.Error(), "does not serve") {
			t.Errorf("hook %t, link %t: %v; want an End with 0x87 that says why", cfg.Reauthenticate != nil, cfg.Link != nil, err)
		}
		s.Release()
	}

	s := New(Config{Version: v5, AuthMethod: "JWT\x00", Reauthenticate: testReauthenticate(t), Link: newRecordingLink()})
	defer s.Release()
	_, _, err := s.Filter(FromBroker, connack(v5), nil, nil)
	var end *End
	if !errors.As(err, &end) || end.Code != packets.ImplementationSpecificError || !strings.Contains(err.Error(), "Config.AuthMethod") {
		t.Errorf("a method with U+0000: %v; want an End with 0x83 naming Config.AuthMethod", err)
	}
}

// TestReauthConcurrently answers re-authentications from their own
// goroutines while both directions are filtered from theirs, under -race:
// each answer's rules apply to the packets the client sends after it got
// the answer's AUTH, and no AUTH of the client's reaches the broker.
func TestReauthConcurrently(t *testing.T) {
	const rounds = 200
	rules := [2]*acl.Policy{testPolicy(t), compile(t, reauthRules)}
	answered := make(chan func(Reauth), 1)
	link := newRecordingLink()
	s := methodSession(t, func(_ []byte, answer func(Reauth)) { answered <- answer }, link)

	brokerDone := make(chan error, 1)
	go func() { // the broker publishes all along
		var err error
		for range rounds {
			if _, _, err = s.Filter(FromBroker, publish(v5, pub{topic: "ok/b", payload: "x"}), nil, nil); err != nil {
				break
			}
		}
		brokerDone <- err
	}()
	var toBroker []byte
	for i := range rounds {
		fwd, _ := filterClient(t, s, cat(publish(v5, pub{topic: "ok/a"}), auth(0x19, "JWT", []byte("t")), publish(v5, pub{topic: "ok/b"})))
		toBroker = append(toBroker, fwd...)
		answer := <-answered
		next := rules[(i+1)%2]
		go answer(Reauth{Policy: next})
		link.wait(t)
		// The client got the AUTH success: ok/a is judged by the new rules.
		fwd, _ = filterClient(t, s, publish(v5, pub{topic: "ok/a"}))
		if allowed := next == rules[0]; (len(fwd) != 0) != allowed {
			t.Fatalf("round %d: ok/a forwarded %t under rules that allow it: %t", i, len(fwd) != 0, allowed)
		}
		toBroker = append(toBroker, fwd...)
	}
	if err := <-brokerDone; err != nil {
		t.Fatalf("the broker's direction ended: %v", err)
	}
	checkNoAuth(t, v5, toBroker)
	if toClient, ends := link.got(); len(toClient) != rounds || len(ends) != 0 {
		t.Errorf("the Link got %d AUTHs and %d Ends, want %d and none", len(toClient), len(ends), rounds)
	}
}

// checkNoAuth fails when stream, what the broker got, holds an AUTH.
func checkNoAuth(tb testing.TB, version byte, stream []byte) {
	tb.Helper()
	f := packets.NewFramer(version, 0)
	defer f.Release()
	f.Feed(stream)
	for {
		fr, ok, err := f.Next()
		if err != nil {
			tb.Fatalf("the broker got a broken stream: %v", err)
		}
		if !ok {
			return
		}
		if fr.Type == packets.TypeAuth {
			tb.Fatalf("an AUTH of a client under a method reached the broker")
		}
	}
}
