package revocation

import (
	"context"
	"testing"
	"time"
)

// TestPacedParse: a document parsed with pauses (long enough here to
// pause many times) gives the set an unpaced parse gives, and took
// pauses.
func TestPacedParse(t *testing.T) {
	ids := uuids(50_000)
	doc := jtiDocument(t, ids)
	started := time.Now()
	pace := newPacer(t.Context())
	set, err := parse(doc, pace)
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != len(ids) {
		t.Fatalf("paced parse: %d entries, want %d", set.Len(), len(ids))
	}
	for _, id := range ids {
		if r, ok := set.Match(Token{ID: id}); !ok || r != ReasonJTI {
			t.Fatalf("paced parse: %s not revoked", id)
		}
	}
	if _, ok := set.Match(Token{ID: "not-listed"}); ok {
		t.Error("paced parse: an id not listed is revoked")
	}
	if pace.timer == nil {
		t.Errorf("the parse of %d entries, %v, never paused", len(ids), time.Since(started))
	}
}

// TestPacerStopsWhenDone: once its context is done, a pacer no longer
// sleeps, so that Close does not wait for a paced refresh to finish at
// its slow pace: here, a chunk of an hour's work would be followed by
// three hours of sleep.
func TestPacerStopsWhenDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	p := newPacer(ctx)
	p.since = time.Now().Add(-time.Hour)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.check()
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatalf("the pacer still sleeps %s after its context was cancelled", waitTimeout)
	}
	p.since = time.Now().Add(-time.Hour)
	p.check() // returns at once: the context is done
}
