package proxy

import (
	"math"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits bound what clients may cost the proxy before they are
// authenticated. The zero value applies DefaultConnectTimeout and
// packets.DefaultMaxConnectSize and no other limit.
type Limits struct {
	// ConnectTimeout is how long a client has, from accept, to send its
	// whole CONNECT and be authenticated. Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxConnectSize caps the CONNECT packet in bytes. Zero means
	// packets.DefaultMaxConnectSize.
	MaxConnectSize int
	// MaxConnections caps open client connections over all listeners;
	// over it a new connection is closed at accept, before anything is
	// read. Zero means no cap.
	MaxConnections int
	// MaxListenerConnections caps open connections per listener name, in
	// the same way. A listener not named has no cap of its own.
	MaxListenerConnections map[string]int
	// MaxPendingConnects caps connections that have not finished their
	// CONNECT. Over it, the one that has waited longest is closed to make
	// room: an idle flood (slowloris) then evicts itself, while real
	// clients, which send CONNECT at once, get through. Zero means no cap.
	MaxPendingConnects int
	// PerIPConnectRate is how many new connections per second one client
	// IP may open, with bursts of PerIPConnectBurst; over it a connection
	// is closed at accept. Zero means no limit.
	PerIPConnectRate float64
	// PerIPConnectBurst is the token bucket's size. Zero means the rate
	// rounded up, at least 1.
	PerIPConnectBurst int
}

// Kinds of limit, for logs and the limit_rejections_total metric.
const (
	limitMaxConnections      = "max_connections"
	limitListenerConnections = "max_listener_connections"
	limitPending             = "max_pending_connects"
	limitRate                = "per_ip_connect_rate"
)

// maxTrackedIPs bounds the per-IP rate limiter's memory: at most twice
// this many limiters (about 100 bytes each) are kept.
const maxTrackedIPs = 100_000

// ipRates is a per-IP token bucket with bounded memory. Limiters live in
// two generations; when the current one is full it becomes the previous
// one and the oldest generation is dropped. An IP dropped that way starts
// again with a full bucket, which errs on the side of letting a client in.
type ipRates struct {
	limit rate.Limit
	burst int

	mu        sync.Mutex
	cur, prev map[string]*rate.Limiter
}

func newIPRates(perSecond float64, burst int) *ipRates {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSecond)))
	}
	return &ipRates{limit: rate.Limit(perSecond), burst: burst, cur: map[string]*rate.Limiter{}}
}

// allow reports whether a new connection from addr fits its IP's rate.
// A nil *ipRates allows everything.
func (r *ipRates) allow(addr net.Addr, now time.Time) bool {
	if r == nil {
		return true
	}
	ip := addr.String()
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.cur[ip]
	if !ok {
		if l, ok = r.prev[ip]; !ok {
			l = rate.NewLimiter(r.limit, r.burst)
		}
		if len(r.cur) >= maxTrackedIPs {
			r.prev, r.cur = r.cur, make(map[string]*rate.Limiter, len(r.cur))
		}
		r.cur[ip] = l
	}
	return l.AllowN(now, 1)
}
