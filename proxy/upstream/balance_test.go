package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// newTestPool is a pool without health checks over servers given as
// "address" or "address*weight".
func newTestPool(t testing.TB, balance Balance, servers ...string) *Pool[int] {
	t.Helper()
	p, err := NewPool("test", PoolConfig[int]{Servers: testServers(servers...), Balance: balance}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func testServers(specs ...string) []Server[int] {
	servers := make([]Server[int], len(specs))
	for i, spec := range specs {
		addr, weight := spec, 1
		if a, w, ok := strings.Cut(spec, "*"); ok {
			addr = a
			fmt.Sscan(w, &weight)
		}
		servers[i] = Server[int]{Address: addr, Weight: weight, Settings: i}
	}
	return servers
}

// pick returns the addresses of p's candidates for id.
func pick(t testing.TB, p *Pool[int], id string) []string {
	t.Helper()
	candidates, err := p.Pick(id, nil)
	if err != nil {
		t.Fatalf("Pick(%q): %v", id, err)
	}
	addrs := make([]string, len(candidates))
	for i, b := range candidates {
		addrs[i] = b.Server().Address
	}
	return addrs
}

// markDown marks the server at addr down, as its health checks would.
func markDown(p *Pool[int], addr string) {
	for _, b := range p.set.Load().backends {
		if b.Server().Address == addr {
			b.up.Store(false)
		}
	}
}

func deviceIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("device-%04d", i)
	}
	return ids
}

// TestRoundRobinSpreadsEvenly: 1,000 picks over three servers of equal
// weight are within 10% of even, and every pick offers the other two
// servers as failover.
func TestRoundRobinSpreadsEvenly(t *testing.T) {
	p := newTestPool(t, RoundRobin, "a:1", "b:1", "c:1")
	count := map[string]int{}
	for _, id := range deviceIDs(1000) {
		got := pick(t, p, id)
		if len(got) != 3 {
			t.Fatalf("candidates %v, want all three servers", got)
		}
		count[got[0]]++
	}
	for _, addr := range []string{"a:1", "b:1", "c:1"} {
		if n := count[addr]; math.Abs(float64(n)-1000.0/3) > 1000.0/3*0.10 {
			t.Errorf("%s took %d of 1000 picks; want within 10%% of 333 (%v)", addr, n, count)
		}
	}
}

// TestRoundRobinIsSmooth: weights 5, 1, 1 interleave as nginx's smooth
// weighted round robin does, not five a's in a row.
func TestRoundRobinIsSmooth(t *testing.T) {
	p := newTestPool(t, RoundRobin, "a:1*5", "b:1", "c:1")
	var got []string
	for range 14 {
		got = append(got, strings.TrimSuffix(pick(t, p, "")[0], ":1"))
	}
	if want := "a a b a c a a a a b a c a a"; strings.Join(got, " ") != want {
		t.Errorf("picks %s, want %s", strings.Join(got, " "), want)
	}
}

// TestRoundRobinSkipsDownServers: a server marked down is neither picked
// nor offered for failover, and the others share its turns.
func TestRoundRobinSkipsDownServers(t *testing.T) {
	p := newTestPool(t, RoundRobin, "a:1", "b:1", "c:1")
	markDown(p, "b:1")
	count := map[string]int{}
	for range 100 {
		got := pick(t, p, "")
		if slices.Contains(got, "b:1") || len(got) != 2 {
			t.Fatalf("candidates %v, want a and c only", got)
		}
		count[got[0]]++
	}
	if count["a:1"] != 50 || count["c:1"] != 50 {
		t.Errorf("picks %v, want 50 each for a and c", count)
	}
}

// TestAllServersDown: Pick says so with ErrNoServerUp and leaves dst as
// it was.
func TestAllServersDown(t *testing.T) {
	for _, balance := range Balances {
		t.Run(string(balance), func(t *testing.T) {
			p := newTestPool(t, balance, "a:1", "b:1")
			markDown(p, "a:1")
			markDown(p, "b:1")
			dst := make([]*Backend[int], 1, 4)
			got, err := p.Pick("device-1", dst)
			if !errors.Is(err, ErrNoServerUp) || !strings.Contains(err.Error(), `"test"`) {
				t.Errorf("Pick error = %v, want ErrNoServerUp naming the pool", err)
			}
			if len(got) != 1 {
				t.Errorf("Pick returned %d candidates, want dst unchanged", len(got))
			}
			if p.Ready() {
				t.Error("Ready with every server down")
			}
		})
	}
}

// TestClientIDIsStable: the same identifier gets the same server from two
// pools built apart, as two proxy processes, or one before and after a
// restart, would build them; and the servers listed in another order
// change nothing.
func TestClientIDIsStable(t *testing.T) {
	first := newTestPool(t, ClientID, "10.0.0.1:1883", "10.0.0.2:1883", "10.0.0.3:1883")
	second := newTestPool(t, ClientID, "10.0.0.3:1883", "10.0.0.1:1883", "10.0.0.2:1883")
	count := map[string]int{}
	for _, id := range deviceIDs(1000) {
		a, b := pick(t, first, id), pick(t, second, id)
		if !slices.Equal(a, b) {
			t.Fatalf("%s: candidates %v, then %v", id, a, b)
		}
		if again := pick(t, first, id); !slices.Equal(a, again) {
			t.Fatalf("%s: candidates %v, then %v from the same pool", id, a, again)
		}
		count[a[0]]++
	}
	for addr, n := range count {
		if math.Abs(float64(n)-1000.0/3) > 1000.0/3*0.15 {
			t.Errorf("%s holds %d of 1000 identifiers; want within 15%% of 333 (%v)", addr, n, count)
		}
	}
}

// TestClientIDPinned pins where some identifiers go: the hash is part of
// the interface, since changing it would move every device to another
// broker at the upgrade, away from its session.
func TestClientIDPinned(t *testing.T) {
	p := newTestPool(t, ClientID, "10.0.0.1:1883", "10.0.0.2:1883", "10.0.0.3:1883")
	for id, want := range map[string]string{
		"device-0000":                          "10.0.0.2:1883",
		"device-0001":                          "10.0.0.1:1883",
		"device-0003":                          "10.0.0.1:1883",
		"sensor/7":                             "10.0.0.3:1883",
		"a":                                    "10.0.0.3:1883",
		"f81d4fae-7dec-11d0-a765-00a0c91e6bf6": "10.0.0.1:1883",
	} {
		if got := pick(t, p, id)[0]; got != want {
			t.Errorf("%s goes to %s, was pinned to %s", id, got, want)
		}
	}
}

// TestClientIDAddingAServerMovesItsShare: a fourth server of the same
// weight takes about a quarter of the identifiers, every one of them
// from the other three, and no identifier moves between those.
func TestClientIDAddingAServerMovesItsShare(t *testing.T) {
	three := []string{"10.0.0.1:1883", "10.0.0.2:1883", "10.0.0.3:1883"}
	p := newTestPool(t, ClientID, three...)
	before := map[string]string{}
	ids := deviceIDs(1000)
	for _, id := range ids {
		before[id] = pick(t, p, id)[0]
	}
	if err := p.Update(PoolConfig[int]{Servers: testServers(append(three, "10.0.0.4:1883")...), Balance: ClientID}); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, id := range ids {
		now := pick(t, p, id)[0]
		if now == before[id] {
			continue
		}
		moved++
		if now != "10.0.0.4:1883" {
			t.Errorf("%s moved from %s to %s, not to the new server", id, before[id], now)
		}
	}
	if moved > 350 || moved < 150 {
		t.Errorf("%d of 1000 identifiers moved; want about 250, at most 350", moved)
	}

	// Removing it again puts every identifier back.
	if err := p.Update(PoolConfig[int]{Servers: testServers(three...), Balance: ClientID}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if now := pick(t, p, id)[0]; now != before[id] {
			t.Errorf("%s is on %s after the fourth server left, was on %s", id, now, before[id])
		}
	}
}

// TestClientIDFailover: when an identifier's server is down, its first
// candidate is the one that was second, the server it would have with
// the first one gone; and the other identifiers stay where they were.
func TestClientIDFailover(t *testing.T) {
	p := newTestPool(t, ClientID, "10.0.0.1:1883", "10.0.0.2:1883", "10.0.0.3:1883")
	ids := deviceIDs(300)
	before := map[string][]string{}
	for _, id := range ids {
		before[id] = pick(t, p, id)
	}
	markDown(p, "10.0.0.2:1883")
	for _, id := range ids {
		got := pick(t, p, id)
		want := slices.DeleteFunc(slices.Clone(before[id]), func(a string) bool { return a == "10.0.0.2:1883" })
		if !slices.Equal(got, want) {
			t.Errorf("%s: candidates %v with 10.0.0.2 down, want %v (from %v)", id, got, want, before[id])
		}
	}
}

// TestClientIDWeights: a server of weight 2 among two of weight 1 holds
// about half the identifiers.
func TestClientIDWeights(t *testing.T) {
	p := newTestPool(t, ClientID, "10.0.0.1:1883", "10.0.0.2:1883*2", "10.0.0.3:1883")
	count := map[string]int{}
	for _, id := range deviceIDs(10000) {
		count[pick(t, p, id)[0]]++
	}
	for addr, want := range map[string]float64{"10.0.0.1:1883": 2500, "10.0.0.2:1883": 5000, "10.0.0.3:1883": 2500} {
		if n := float64(count[addr]); math.Abs(n-want) > want*0.08 {
			t.Errorf("%s holds %v of 10000; want about %v (%v)", addr, n, want, count)
		}
	}
}

// TestEqualWeightsRankByHash: with equal weights Pick ranks by the hash
// and skips the logarithm; the order must be the weighted score's, so
// that a pool whose weights become equal moves no device.
func TestEqualWeightsRankByHash(t *testing.T) {
	servers := []string{"10.0.0.1:1883", "10.0.0.2:1883", "10.0.0.3:1883"}
	equal := newTestPool(t, ClientID, servers...)
	for _, id := range deviceIDs(1000) {
		h := xxhash.Sum64String(id)
		want := slices.Clone(servers)
		slices.SortStableFunc(want, func(a, b string) int {
			return -cmp.Compare(rendezvousScore(h, serverSeed(a), 1), rendezvousScore(h, serverSeed(b), 1))
		})
		if got := pick(t, equal, id); !slices.Equal(got, want) {
			t.Fatalf("%s: candidates %v, the weighted scores rank %v", id, got, want)
		}
	}
}

// TestEmptyClientIDIsLeastConnections: without an identifier to hash,
// client_id balances by connections.
func TestEmptyClientIDIsLeastConnections(t *testing.T) {
	p := newTestPool(t, ClientID, "a:1", "b:1", "c:1")
	for range 30 {
		candidates, err := p.Pick("", nil)
		if err != nil {
			t.Fatal(err)
		}
		candidates[0].Acquire()
	}
	for _, s := range p.Status(nil) {
		if s.Active != 10 {
			t.Errorf("%s has %d connections after 30 clients without an identifier, want 10", s.Address, s.Active)
		}
	}
}

// TestLeastConnections: the server with the fewest connections for its
// weight comes first, ties in turn, and a released connection counts no
// more.
func TestLeastConnections(t *testing.T) {
	p := newTestPool(t, LeastConnections, "a:1", "b:1*3")
	backends := map[string]*Backend[int]{}
	for _, b := range p.set.Load().backends {
		backends[b.Server().Address] = b
	}
	var order []string
	for range 8 {
		candidates, err := p.Pick("", nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(candidates) != 2 {
			t.Fatalf("%d candidates, want 2", len(candidates))
		}
		candidates[0].Acquire()
		order = append(order, strings.TrimSuffix(candidates[0].Server().Address, ":1"))
	}
	if a, b := backends["a:1"].Active(), backends["b:1"].Active(); a != 2 || b != 6 {
		t.Errorf("a has %d connections, b %d (order %v); want 2 and 6 for weights 1 and 3", a, b, order)
	}
	for range 6 {
		backends["b:1"].Release()
	}
	if got := pick(t, p, "")[0]; got != "b:1" {
		t.Errorf("picked %s with b released to 0, want b", got)
	}

	// Ties go round: with no connections, each server comes first in turn.
	q := newTestPool(t, LeastConnections, "a:1", "b:1", "c:1")
	first := map[string]int{}
	for range 30 {
		first[pick(t, q, "")[0]]++
	}
	if first["a:1"] != 10 || first["b:1"] != 10 || first["c:1"] != 10 {
		t.Errorf("first candidates %v with no connections, want 10 each", first)
	}
}

// benchServers are n servers of weight 1, or, weighted, of weights 1,
// 2, 3, 1, 2, 3, ...
func benchServers(n int, weighted bool) []string {
	specs := make([]string, n)
	for i := range specs {
		specs[i] = fmt.Sprintf("10.0.0.%d:1883", i+1)
		if weighted {
			specs[i] += fmt.Sprintf("*%d", i%3+1)
		}
	}
	return specs
}

// pickCases are the pools BenchmarkPick and TestPickAllocatesNothing pick
// from: each balance, over 3 and 10 servers.
var pickCases = func() (cases []struct {
	name    string
	balance Balance
	servers []string
}) {
	for _, n := range []int{3, 10} {
		for _, balance := range Balances {
			cases = append(cases, struct {
				name    string
				balance Balance
				servers []string
			}{fmt.Sprintf("%s/%d", balance, n), balance, benchServers(n, false)})
		}
		cases = append(cases, struct {
			name    string
			balance Balance
			servers []string
		}{fmt.Sprintf("%s_weighted/%d", ClientID, n), ClientID, benchServers(n, true)})
	}
	return cases
}()

// TestPickAllocatesNothing: with room in dst, a pick allocates nothing,
// under every balance. (BenchmarkPick measures its cost.)
func TestPickAllocatesNothing(t *testing.T) {
	for _, tc := range pickCases {
		p := newTestPool(t, tc.balance, tc.servers...)
		var buf [inlineServers]*Backend[int]
		allocs := testing.AllocsPerRun(1000, func() {
			if _, err := p.Pick("device-0042", buf[:0]); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per pick, want 0", tc.name, allocs)
		}
	}
}

// BenchmarkPick measures the choice of a server for a client and the
// ranking of the others for failover, under each balance, over 3 and 10
// servers, for client identifiers that vary. The target is under 1 µs a
// pick.
func BenchmarkPick(b *testing.B) {
	ids := deviceIDs(1024)
	for _, tc := range pickCases {
		b.Run(tc.name, func(b *testing.B) {
			p := newTestPool(b, tc.balance, tc.servers...)
			var buf [inlineServers]*Backend[int]
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := p.Pick(ids[i%len(ids)], buf[:0]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// TestUpdatePutsBackDrainingServer: a server removed by a reload while it
// has a connection, and put back by the next, is the same Backend, its
// connection counted and its Removed channel open; one put back once its
// connections have ended is a new one.
func TestUpdatePutsBackDrainingServer(t *testing.T) {
	p := newTestPool(t, LeastConnections, "a:1", "b:1")
	backend := func(addr string) *Backend[int] {
		for _, b := range p.set.Load().backends {
			if b.Server().Address == addr {
				return b
			}
		}
		t.Fatalf("no server %s", addr)
		return nil
	}
	update := func(servers ...string) {
		t.Helper()
		if err := p.Update(PoolConfig[int]{Servers: testServers(servers...), Balance: LeastConnections}); err != nil {
			t.Fatal(err)
		}
	}
	b := backend("b:1")
	b.Acquire()
	update("a:1")
	select {
	case <-b.Removed():
	default:
		t.Fatal("b was removed, and its Removed channel is open")
	}
	update("a:1", "b:1")
	if got := backend("b:1"); got != b || got.Active() != 1 {
		t.Fatalf("b put back while connected: Backend %p (was %p), Active %d, want the same, 1", got, b, got.Active())
	}
	select {
	case <-b.Removed():
		t.Error("b was put back, and its Removed channel is closed")
	default:
	}
	if got := pick(t, p, ""); got[0] != "a:1" {
		t.Errorf("least connections picked %v, want a first: b has a connection", got)
	}

	update("a:1")
	b.Release()
	update("a:1") // b has no connection left: forgotten
	update("a:1", "b:1")
	if got := backend("b:1"); got == b || got.Active() != 0 {
		t.Errorf("b put back after its drain: the old Backend (Active %d), want a new one", got.Active())
	}
}

// TestUpdateKeepsServers: a reload keeps the state of the servers it
// keeps (connections, health), takes their new weight, and closes the
// Removed channel of those it drops.
func TestUpdateKeepsServers(t *testing.T) {
	// The first check of a fails; the next is an hour away.
	check := &HealthCheck{Interval: time.Hour}
	dial := func(ctx context.Context, s *Server[int]) (net.Conn, error) {
		if s.Address == "a:1" {
			return nil, errors.New("refused")
		}
		client, server := net.Pipe()
		server.Close()
		return client, nil
	}
	p, err := NewPool("test", PoolConfig[int]{Servers: testServers("a:1", "b:1", "c:1"), Balance: RoundRobin, HealthCheck: check}, dial, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	old := map[string]*Backend[int]{}
	for _, b := range p.set.Load().backends {
		old[b.Server().Address] = b
	}
	waitFor(t, "a marked down", func() bool { return !old["a:1"].Up() })
	old["a:1"].Acquire()
	old["b:1"].Acquire()
	if err := p.Update(PoolConfig[int]{Servers: testServers("a:1*3", "c:1", "d:1"), Balance: RoundRobin, HealthCheck: check}); err != nil {
		t.Fatal(err)
	}
	status := map[string]ServerStatus{}
	for _, s := range p.Status(nil) {
		status[s.Address] = s
	}
	if len(status) != 3 || status["a:1"].Weight != 3 || status["a:1"].Active != 1 || status["a:1"].Up || !status["d:1"].Up {
		t.Errorf("status after the reload: %+v", status)
	}
	select {
	case <-old["b:1"].Removed():
	default:
		t.Error("b was removed, and its Removed channel is open")
	}
	select {
	case <-old["a:1"].Removed():
		t.Error("a was kept, and its Removed channel is closed")
	default:
	}
	old["b:1"].Release() // its connection ends after the reload: no panic, no count elsewhere
	if got := pick(t, p, ""); slices.Contains(got, "b:1") || slices.Contains(got, "a:1") {
		t.Errorf("candidates %v: b is gone and a is down", got)
	}

	// Without health checks nothing marks a server down, so a goes up.
	if err := p.Update(PoolConfig[int]{Servers: testServers("a:1*3", "c:1", "d:1"), Balance: RoundRobin}); err != nil {
		t.Fatal(err)
	}
	if !old["a:1"].Up() {
		t.Error("a is still down once health checks are off")
	}

	// A bad configuration changes nothing.
	err = p.Update(PoolConfig[int]{Servers: testServers("a:1", "a:1*0"), Balance: "random"})
	for _, want := range []string{"listed twice", "weight 0", `balance "random"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Update error = %v, want it to mention %q", err, want)
		}
	}
	if got := len(p.Status(nil)); got != 3 {
		t.Errorf("%d servers after a refused update, want 3", got)
	}
}

// waitFor waits until cond holds, checking every few milliseconds, or
// fails the test after waitTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitTimeout bounds waitFor: generous, for -race on a loaded machine;
// waits end as soon as their condition holds.
const waitTimeout = 20 * time.Second
