package revocation

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// million is the size of the large lists the benchmarks use.
const million = 1_000_000

// uuids returns n distinct random UUIDs (36 characters), the same at
// every call, as jti values usually are.
func uuids(n int) []string {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]string, n)
	for i := range out {
		a, b := r.Uint64(), r.Uint64()
		out[i] = fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", a>>32, a>>16&0xffff, a&0xffff, b>>48, b&0xffffffffffff)
	}
	return out
}

// jtiDocument is a revocation document listing ids under jti.
func jtiDocument(tb testing.TB, ids []string) []byte {
	doc, err := json.Marshal(map[string][]string{"jti": ids})
	if err != nil {
		tb.Fatal(err)
	}
	return doc
}

// lookupKeys returns n keys of which hits are taken from listed, the rest
// never listed, in a compact slice and an order that spreads them over the
// whole set: each lookup's path through the set is cold, as for a CONNECT,
// while the key itself, as a token just read, is not.
func lookupKeys(listed []string, n int, hits bool) []string {
	keys := make([]string, n)
	fresh := uuids(len(listed) + n)[len(listed):]
	for i := range keys {
		if hits {
			keys[i] = strings.Clone(listed[(i*7919+13)%len(listed)])
		} else {
			keys[i] = strings.Clone(fresh[i])
		}
	}
	return keys
}

// BenchmarkMatch1M is the check of one CONNECT against a list of a
// million jti values, plus one entry under each other key: a token that
// is not revoked (every key looked up), and one revoked by its jti.
func BenchmarkMatch1M(b *testing.B) {
	ids := uuids(million)
	doc := jtiDocument(b, ids)
	doc = append(doc[:len(doc)-1], `,"sub":["mallory"],"client_id":["sensor-13"],"issued_before":{"alice":"2025-06-01T12:00:00Z"}}`...)
	s, err := Parse(doc)
	if err != nil {
		b.Fatal(err)
	}
	iat := time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC)
	const n = 1 << 16
	fresh, listed := lookupKeys(ids, n, false), lookupKeys(ids, n, true)
	b.Run("not-revoked", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			tok := Token{ID: fresh[i%n], Subject: "alice", ClientID: "sensor-7", IssuedAt: iat}
			if _, revoked := s.Match(tok); revoked {
				b.Fatal("revoked")
			}
		}
	})
	b.Run("revoked-by-jti", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			tok := Token{ID: listed[i%n], Subject: "carol", ClientID: "sensor-7", IssuedAt: iat}
			if _, revoked := s.Match(tok); !revoked {
				b.Fatal("not revoked")
			}
		}
	})
}

// BenchmarkLookup1M compares one lookup in a set of a million jti values
// with one in a map[string]struct{} of the same strings, the obvious
// alternative, for a listed key and for one never listed.
func BenchmarkLookup1M(b *testing.B) {
	ids := uuids(million)
	s, err := Parse(jtiDocument(b, ids))
	if err != nil {
		b.Fatal(err)
	}
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[strings.Clone(id)] = struct{}{}
	}
	const n = 1 << 16
	for _, keys := range []struct {
		name string
		keys []string
		want bool
	}{{"hit", lookupKeys(ids, n, true), true}, {"miss", lookupKeys(ids, n, false), false}} {
		b.Run("sorted-hashes/"+keys.name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				if _, ok := s.jti.find(keys.keys[i%n]); ok != keys.want {
					b.Fatal(ok)
				}
			}
		})
		b.Run("map/"+keys.name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				if _, ok := m[keys.keys[i%n]]; ok != keys.want {
					b.Fatal(ok)
				}
			}
		})
	}
}

// BenchmarkHeapPerEntry measures the heap a million jti values take once
// loaded, per entry: in the set Parse builds, and in a
// map[string]struct{} of the same strings, the obvious alternative. Run it
// with -benchtime=1x; docs/design.md has the figures.
func BenchmarkHeapPerEntry(b *testing.B) {
	ids := uuids(million)
	doc := jtiDocument(b, ids)
	measure := func(b *testing.B, build func() any) {
		var kept any
		for b.Loop() {
			before := heapInUse()
			kept = build()
			after := heapInUse()
			b.ReportMetric(float64(after-before)/million, "B/entry")
		}
		runtime.KeepAlive(kept)
	}
	b.Run("sorted-hashes", func(b *testing.B) {
		measure(b, func() any {
			s, err := Parse(doc)
			if err != nil {
				b.Fatal(err)
			}
			return s
		})
	})
	b.Run("map", func(b *testing.B) {
		measure(b, func() any {
			var parsed struct{ JTI []string }
			if err := json.Unmarshal(doc, &parsed); err != nil {
				b.Fatal(err)
			}
			m := make(map[string]struct{}, len(parsed.JTI))
			for _, id := range parsed.JTI {
				m[id] = struct{}{}
			}
			return m
		})
	})
}

// heapInUse is the heap in use once garbage is collected.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkParse1M is the load of a list of a million jti values: what
// each refresh that finds a new document costs.
func BenchmarkParse1M(b *testing.B) {
	doc := jtiDocument(b, uuids(million))
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(doc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRefresh1MPaced is what a refresh that finds a new document
// of a million jti values costs with its pacing (refreshCPUShare): the
// document hashed, parsed and its set built, as List does it. ns/op is
// the wall time the new set takes to be ready; cpu-share is the process's
// CPU time (the garbage collector's included) over that wall time, in
// cores.
func BenchmarkRefresh1MPaced(b *testing.B) {
	doc := jtiDocument(b, uuids(million))
	b.SetBytes(int64(len(doc)))
	var cpu time.Duration
	for b.Loop() {
		before := processCPU(b)
		pace := newPacer(context.Background())
		hashDocument(doc, pace)
		if _, err := parse(doc, pace); err != nil {
			b.Fatal(err)
		}
		cpu += processCPU(b) - before
	}
	b.ReportMetric(cpu.Seconds()/b.Elapsed().Seconds(), "cpu-share")
}

// BenchmarkRevokedDuringRefresh is the check at CONNECT (List.Revoked)
// against a list of a million jti values, first with the list idle, then
// while another goroutine refreshes it from a URL again and again, each
// time with a different million-entry document to fetch, hash and parse:
// what a refresh costs the connections arriving meanwhile. Besides ns/op
// it reports the slowest lookup and how many in a million took over 1 µs.
func BenchmarkRevokedDuringRefresh(b *testing.B) {
	ids := uuids(million + 1)
	docs := [][]byte{jtiDocument(b, ids[:million]), jtiDocument(b, ids[1:])}
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(docs[served.Add(1)%2])
	}))
	defer srv.Close()
	l, err := New(configs.Revocation{URL: srv.URL, RefreshInterval: configs.Duration(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	<-l.FirstRefreshDone()
	if st := l.Status(); st.Entries != million {
		b.Fatalf("loaded %+v", st)
	}
	const n = 1 << 16
	fresh := lookupKeys(ids, n, false)

	lookups := func(b *testing.B) {
		var slowest time.Duration
		var slow int
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			start := time.Now()
			if _, revoked := l.Revoked(Token{ID: fresh[i%n], Subject: "carol", ClientID: "sensor-7"}); revoked {
				b.Fatal("revoked")
			}
			took := time.Since(start)
			slowest = max(slowest, took)
			if took > time.Microsecond {
				slow++
			}
		}
		b.ReportMetric(float64(slowest.Nanoseconds()), "max-ns")
		b.ReportMetric(float64(slow)*1e6/float64(b.N), "over-1µs/1M")
	}
	b.Run("idle", lookups)
	b.Run("during-refresh", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		var refreshes atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				if err := l.Refresh(ctx); err == nil {
					refreshes.Add(1)
				}
			}
		}()
		lookups(b)
		cancel()
		<-done
		b.ReportMetric(float64(refreshes.Load()), "refreshes")
	})
}
