package proxy

import (
	"math"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// Limits bound what clients may cost the proxy before they are
// authenticated. The zero value applies DefaultConnectTimeout,
// packets.DefaultMaxConnectSize and configs.DefaultMaxPendingConnectBytes,
// and no other limit.
type Limits struct {
	// ConnectTimeout is how long a client has, from accept, to send its
	// whole CONNECT and be authenticated. Zero means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// MaxConnectSize caps the CONNECT packet in bytes. Zero means
	// packets.DefaultMaxConnectSize.
	MaxConnectSize int
	// MaxPacketSize caps every packet of a session with topic rules after
	// its CONNECT, either way, fixed header included: a larger one ends
	// the session. Zero means configs.DefaultMaxPacketSize.
	MaxPacketSize int
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
	// MaxPendingConnectBytes caps the bytes that the CONNECTs of pending
	// connections hold in all, until each is decided: what they have
	// sent (a buffer grows as the bytes arrive, at most doubling, not to
	// the length a client declares), the decoded CONNECT once whole
	// (packets.Connect.DecodedSize), and for a connection whose TLS the
	// proxy terminates, from accept on, configs.PendingTLSRecordBytes for
	// the record crypto/tls buffers. Over it, the connections that have
	// held bytes longest are closed until the rest fit, so that clients
	// trickling large CONNECTs or TLS records cannot hold more, however
	// many they are. Zero means configs.DefaultMaxPendingConnectBytes.
	MaxPendingConnectBytes int
	// PerIPConnectRate is how many new connections per second one client
	// IP may open, with bursts of PerIPConnectBurst; over it a connection
	// is closed at accept. Zero means no limit.
	PerIPConnectRate float64
	// PerIPConnectBurst is the token bucket's size. Zero means the rate
	// rounded up, at least 1.
	PerIPConnectBurst int
	// PerClientIDConnectRate is how many connections per second one
	// client ID may make once authenticated, with bursts of
	// PerClientIDConnectBurst: a device reconnecting in a loop costs the
	// broker a session takeover each time. Over it the client is refused
	// with CONNACK 0x9F connection rate exceeded (3 in MQTT 3.1.1) before
	// the upstream is dialed. The ID is the one the broker gets (after
	// Forward); an empty ID is not limited. Only authenticated clients
	// count, so bad tokens cannot use up another client's rate. Zero
	// means no limit.
	PerClientIDConnectRate float64
	// PerClientIDConnectBurst is that token bucket's size. Zero means the
	// rate rounded up, at least 1.
	PerClientIDConnectBurst int
}

// Kinds of limit, for logs and the limit_rejections_total metric.
const (
	limitMaxConnections      = "max_connections"
	limitListenerConnections = "max_listener_connections"
	limitPending             = "max_pending_connects"
	limitPendingBytes        = "max_pending_connect_bytes"
	limitRate                = "per_ip_connect_rate"
	limitClientIDRate        = "per_client_id_connect_rate"
)

func (l *Limits) maxPacketSize() int {
	if l.MaxPacketSize <= 0 {
		return configs.DefaultMaxPacketSize
	}
	return l.MaxPacketSize
}

func (l *Limits) maxPendingConnectBytes() int {
	if l.MaxPendingConnectBytes <= 0 {
		return configs.DefaultMaxPendingConnectBytes
	}
	return l.MaxPendingConnectBytes
}

// maxTrackedKeys bounds a rate limiter's memory: at most twice this many
// token buckets (about 100 bytes each) are kept.
const maxTrackedKeys = 100_000

// keyedRates is a token bucket per key (a client IP, a client ID) with
// bounded memory. Buckets live in two generations; when the current one
// is full it becomes the previous one and the oldest generation is
// dropped. A key dropped that way starts again with a full bucket, which
// errs on the side of letting a client in.
type keyedRates struct {
	limit rate.Limit
	burst int

	mu        sync.Mutex
	cur, prev map[string]*rate.Limiter
}

// newKeyedRates is nil, which allows everything, when perSecond is not
// positive.
func newKeyedRates(perSecond float64, burst int) *keyedRates {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(math.Ceil(perSecond)))
	}
	return &keyedRates{limit: rate.Limit(perSecond), burst: burst, cur: map[string]*rate.Limiter{}}
}

// allow reports whether one more connection for key fits its rate. A nil
// *keyedRates allows everything.
func (r *keyedRates) allow(key string, now time.Time) bool {
	if r == nil {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.cur[key]
	if !ok {
		if l, ok = r.prev[key]; !ok {
			l = rate.NewLimiter(r.limit, r.burst)
		}
		if len(r.cur) >= maxTrackedKeys {
			r.prev, r.cur = r.cur, make(map[string]*rate.Limiter, len(r.cur))
		}
		r.cur[key] = l
	}
	return l.AllowN(now, 1)
}

// hostOf is addr's IP, the key of the per-IP rate.
func hostOf(addr net.Addr) string {
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return host
}
