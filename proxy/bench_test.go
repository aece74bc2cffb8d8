package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/revocation"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy/upstream"
)

// benchConnack is what the benchmarks' upstream accepts every client with.
var benchConnack = []byte{0x20, 0x02, 0x00, 0x00}

// benchDisconnect is an MQTT 3.1.1 DISCONNECT.
var benchDisconnect = []byte{0xe0, 0x00}

// benchBroker is a minimal broker: it reads the CONNECT, answers
// benchConnack, then hands the connection to session, and closes it when
// session returns, as a broker closes after DISCONNECT. It returns its
// address.
func benchBroker(b *testing.B, session func(net.Conn)) string {
	b.Helper()
	upstream := listen(b)
	var sessions sync.WaitGroup
	b.Cleanup(func() {
		upstream.Close()
		sessions.Wait() // the proxy, closed first, has closed their connections
	})
	sessions.Go(func() {
		for {
			c, err := upstream.Accept()
			if err != nil {
				return
			}
			sessions.Go(func() {
				defer c.Close()
				if _, err := packets.ReadConnect(c, 0); err == nil {
					if _, err := c.Write(benchConnack); err == nil {
						session(c)
					}
				}
			})
		}
	})

	return upstream.Addr().String()
}

// benchProxy serves a Proxy with a real HS256 authentication chain in
// front of benchBrokers running session: with pool zero, the one broker
// of Upstream; else Upstreams, a default pool of that many balanced by
// client_id. With list, the chain checks tokens against it, and the
// proxy its sessions. It returns the proxy's address and an accepted
// client's CONNECT.
func benchProxy(b *testing.B, pool int, session func(net.Conn), list *revocation.List) (addr string, connect []byte) {
	b.Helper()
	chain := jwtChain(b, configs.Authenticator{Name: "jwt", Mechanism: "jwt", Algorithm: "hmac-based", Secret: e2eSecret}, authn.WithRevocation(list))
	p := &Proxy{Verifier: chain}
	if pool == 0 {
		p.Upstream = benchBroker(b, session)
	} else {
		addrs := make([]string, pool)
		for i := range addrs {
			addrs[i] = benchBroker(b, session)
		}
		pools, err := NewUpstreams(defaultPool(upstream.ClientID, nil, servers(addrs...)...), nil)
		if err != nil {
			b.Fatal(err)
		}
		p.Upstreams = pools
	}
	ln := listen(b)
	serveOn(b, p, ln)
	if list != nil {
		p.WatchRevocation(list)
	}

	token, err := jwt.NewBuilder().Subject("bench").Expiration(time.Now().Add(time.Hour)).Build()
	if err != nil {
		b.Fatal(err)
	}
	signed, err := jwt.Sign(token, jwt.WithKey(jwa.HS256, []byte(e2eSecret)))
	if err != nil {
		b.Fatal(err)
	}
	return ln.Addr().String(), connectAs(b, packets.ProtocolV311, "bench", string(signed))
}

// readDisconnect is a benchmark upstream's session: it ends at the
// client's DISCONNECT.
func readDisconnect(c net.Conn) {
	var disconnect [2]byte
	io.ReadFull(c, disconnect[:])
}

// benchOpen connects through the proxy and reads the CONNACK.
func benchOpen(addr string, connect []byte) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	var connack [4]byte
	_, err = c.Write(connect)
	if err == nil {
		_, err = io.ReadFull(c, connack[:])
	}
	if err == nil && !bytes.Equal(connack[:], benchConnack) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// BenchmarkProxyConnect measures whole client sessions through the proxy:
// dial, CONNECT with an HS256 token (verified), the upstream dialed and
// its CONNACK relayed, DISCONNECT, and the close passed back. Allocations
// count the client's and the upstream's too, which share the process.
// The broker is Upstream, or a server of a pool of one or three
// balanced by client_id (routed, picked, held and released).
func BenchmarkProxyConnect(b *testing.B) {
	for _, pool := range []int{0, 1, 3} {
		name := "upstream"
		if pool > 0 {
			name = "pool-" + strconv.Itoa(pool)
		}
		b.Run(name, func(b *testing.B) { benchConnects(b, pool) })
	}
}

func benchConnects(b *testing.B, pool int) {
	addr, connect := benchProxy(b, pool, readDisconnect, nil)
	b.ReportAllocs()
	b.SetParallelism(4) // 4 clients per core keep the proxy busy
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := benchOpen(addr, connect)
			if err != nil {
				b.Error(err)
				return
			}
			c.Write(benchDisconnect)
			io.Copy(io.Discard, c) // until the close comes back through the proxy
			c.Close()
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
}

// BenchmarkConnectDuringRevocationRefresh measures the connect latency
// (dial to CONNACK: the token verified and checked against the list, the
// upstream dialed) of clients connecting one after the other through a
// proxy that holds a revocation list of a million jti values, in periods
// of revocationBenchPeriod that alternate between the list idle and the
// list refreshed again and again from its URL, each time a new
// million-entry document to fetch, hash, parse and check the sessions
// against: the p50 and p99 of each, and the ratio of the p99s, side by
// side in one run. Run it with -benchtime 20s or more: each period must
// hold whole refreshes.
func BenchmarkConnectDuringRevocationRefresh(b *testing.B) {
	const entries = 1_000_000
	r := rand.New(rand.NewPCG(1, 2))
	ids := make([]string, entries+1)
	for i := range ids {
		ids[i] = fmt.Sprintf("%016x-%016x", r.Uint64(), r.Uint64())
	}
	var docs [2][]byte
	for i := range docs {
		doc, err := json.Marshal(map[string][]string{"jti": ids[i : entries+i]})
		if err != nil {
			b.Fatal(err)
		}
		docs[i] = doc
	}
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc := docs[served.Add(1)%2]
		w.Header().Set("Content-Length", strconv.Itoa(len(doc))) // as a file server sends it
		w.Write(doc)
	}))
	b.Cleanup(srv.Close)
	list, err := revocation.New(configs.Revocation{URL: srv.URL, RefreshInterval: configs.Duration(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { list.Close() })
	<-list.FirstRefreshDone()
	if st := list.Status(); st.Entries != entries {
		b.Fatalf("the list loaded %+v, want %d entries", st, entries)
	}
	addr, connect := benchProxy(b, 0, readDisconnect, list)

	// refreshing refreshes the list until stop is called, which waits
	// for the refresh under way.
	var refreshes atomic.Int64
	refreshing := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				if list.Refresh(ctx) == nil {
					refreshes.Add(1)
				}
			}
		}()
		return func() { cancel(); <-done }
	}
	var latencies [2][]time.Duration // idle, during refreshes
	phase, periodStart, stop := 0, time.Now(), func() {}
	for b.Loop() {
		if time.Since(periodStart) > revocationBenchPeriod {
			stop()
			phase, periodStart, stop = 1-phase, time.Now(), func() {}
			if phase == 1 {
				stop = refreshing()
			}
		}
		start := time.Now()
		c, err := benchOpen(addr, connect)
		if err != nil {
			b.Fatal(err)
		}
		latencies[phase] = append(latencies[phase], time.Since(start))
		c.Write(benchDisconnect)
		io.Copy(io.Discard, c)
		c.Close()
	}
	stop()
	if len(latencies[1]) == 0 {
		b.Fatalf("no connect during a refresh: run for longer than %v", revocationBenchPeriod)
	}
	var p99 [2]float64
	for i, name := range []string{"idle", "refresh"} {
		slices.Sort(latencies[i])
		at := func(q float64) float64 {
			return float64(latencies[i][int(q*float64(len(latencies[i])-1))].Microseconds())
		}
		p99[i] = at(0.99)
		b.ReportMetric(at(0.5), "p50-µs-"+name)
		b.ReportMetric(p99[i], "p99-µs-"+name)
	}
	b.ReportMetric(p99[1]/p99[0], "p99-ratio")
	b.ReportMetric(float64(refreshes.Load()), "refreshes")
}

// revocationBenchPeriod is how long BenchmarkConnectDuringRevocationRefresh
// keeps the list idle, then refreshing, in turn: several whole refreshes
// of a million entries.
const revocationBenchPeriod = 2 * time.Second

// BenchmarkSplice measures bytes through an authenticated connection: a
// PUBLISH of each size goes through the proxy to an upstream that echoes
// it, and comes back. The size is the payload's.
func BenchmarkSplice(b *testing.B) {
	addr, connect := benchProxy(b, 0, func(c net.Conn) { io.Copy(c, c) }, nil)
	for _, size := range []int{64, 4 << 10, 64 << 10} {
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			c, err := benchOpen(addr, connect)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			publish := benchPublish(size)
			echo := make([]byte, len(publish))
			b.SetBytes(int64(len(publish)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(publish); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, echo); err != nil {
					b.Fatal(err)
				}
			}
			if !bytes.Equal(echo, publish) {
				b.Fatal("the echo differs from what was sent")
			}
		})
	}
}

// benchPublish is a QoS 0 PUBLISH to topic b with a payload of size bytes.
func benchPublish(size int) []byte {
	remaining := 3 + size
	p := []byte{0x30}
	for ; remaining >= 0x80; remaining >>= 7 {
		p = append(p, byte(remaining&0x7f|0x80))
	}
	p = append(p, byte(remaining), 0, 1, 'b')
	return append(p, bytes.Repeat([]byte{'x'}, size)...)
}

// BenchmarkLoggedUsername is what every connection pays to keep tokens out
// of the logs: a plain user name, and a token in the user name.
func BenchmarkLoggedUsername(b *testing.B) {
	token := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	for _, username := range []string{"sensor-7", token} {
		name := "plain"
		if username == token {
			name = "token"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				loggedUsername(username)
			}
		})
	}
}
