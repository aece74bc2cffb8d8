package proxy

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus metrics. A nil *Metrics records
// nothing, so a Proxy without metrics pays one nil check per event.
type Metrics struct {
	accepted        *prometheus.CounterVec
	active          *prometheus.GaugeVec
	authentications *prometheus.CounterVec
	decision        prometheus.Histogram
	dialFailures    prometheus.Counter
	dial            prometheus.Histogram
	bytes           *prometheus.CounterVec
	limited         *prometheus.CounterVec
	ended           *prometheus.CounterVec
	reauths         *prometheus.CounterVec
	// authorizations are the decisions on PUBLISHes and SUBSCRIBE filters,
	// by action (publish 0, subscribe 1) and outcome (deny 0, allow 1),
	// resolved once: one is counted per packet.
	authorizations [2][2]prometheus.Counter
}

// latencyBuckets span a fast HMAC check on loopback (tens of µs) to a
// JWKS fetch or a slow broker (seconds).
var latencyBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewMetrics creates the proxy's metrics and registers them, with a
// build_info gauge labelled by version, on reg.
func NewMetrics(reg prometheus.Registerer, version string) *Metrics {
	const ns = "mqtt_jwt_proxy"
	m := &Metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "connections_accepted_total",
			Help: "TCP connections accepted, per listener, before any limit or authentication.",
		}, []string{"listener"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "connections_active",
			Help: "Connections open now, per listener, authenticated or not.",
		}, []string{"listener"}),
		authentications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "authentications_total",
			Help: "Admitted connections by outcome and reason, as logged: accepted once the broker has the CONNECT; refused for a bad token or CONNECT, a limit, or upstream_unavailable.",
		}, []string{"outcome", "reason"}),
		decision: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "connect_decision_seconds",
			Help:    "Time from a complete CONNECT to the authentication decision.",
			Buckets: latencyBuckets,
		}),
		dialFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "upstream_dial_failures_total",
			Help: "Failed connections to the upstream broker.",
		}),
		dial: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "upstream_dial_seconds",
			Help:    "Time to connect to the upstream broker, successful dials only.",
			Buckets: latencyBuckets,
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "bytes_total",
			Help: "Bytes proxied, by direction (from_client, to_client), counted when a connection closes.",
		}, []string{"direction"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "limit_rejections_total",
			Help: "Connections refused by a limit, by kind: all before authentication but per_client_id_connect_rate, just after.",
		}, []string{"kind"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "sessions_ended_total",
			Help: "Authenticated sessions the proxy ended, by reason: admin (the sessions API), revoked (a new revocation list), token_expired (disconnect_after_expire), upstream_server_removed (a reload removed its pool's server, and the drain timeout passed).",
		}, []string{"reason"}),
		reauths: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "reauthentications_total",
			Help: "MQTT 5 re-authentications (AUTH 0x19) of sessions under an Authentication Method, by outcome (accepted, refused) and reason, as logged.",
		}, []string{"outcome", "reason"}),
	}
	authorizations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "authorizations_total",
		Help: "Decisions on the PUBLISHes and SUBSCRIBE filters of sessions with topic rules, by action (publish, subscribe) and outcome (allow, deny).",
	}, []string{"action", "outcome"})
	for a, action := range []string{"publish", "subscribe"} {
		for o, outcome := range []string{"deny", "allow"} {
			m.authorizations[a][o] = authorizations.WithLabelValues(action, outcome)
		}
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: ns, Name: "build_info",
		Help: "Build information; the value is 1.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	reg.MustRegister(m.accepted, m.active, m.authentications, m.decision, m.dialFailures, m.dial, m.bytes, m.limited, m.ended, m.reauths, authorizations, build)
	// Authentication outcomes and limit kinds are known in advance: export
	// them at zero so that rate() works from the first event, a broker
	// outage's refusals included.
	m.authentications.WithLabelValues("accepted", "")
	m.authentications.WithLabelValues("refused", reasonUpstreamUnavailable)
	m.reauths.WithLabelValues(outcomeReauthenticated, "")
	for _, kind := range []string{limitMaxConnections, limitListenerConnections, limitPending, limitPendingBytes, limitRate, limitClientIDRate} {
		m.limited.WithLabelValues(kind)
	}
	for _, reason := range endReasons {
		m.ended.WithLabelValues(string(reason))
	}
	return m
}

func (m *Metrics) connAccepted(listener string) {
	if m != nil {
		m.accepted.WithLabelValues(listener).Inc()
	}
}

func (m *Metrics) connOpened(listener string) {
	if m != nil {
		m.active.WithLabelValues(listener).Inc()
	}
}

func (m *Metrics) connClosed(listener string) {
	if m != nil {
		m.active.WithLabelValues(listener).Dec()
	}
}

// decided counts a connection's outcome (accepted, or refused for
// reason) and observes how long its decision took.
func (m *Metrics) decided(outcome, reason string, took time.Duration) {
	m.outcome(outcome, reason)
	m.decisionTook(took)
}

// outcome counts a connection's outcome: accepted once the broker has
// its CONNECT, or refused for reason.
func (m *Metrics) outcome(outcome, reason string) {
	if m != nil {
		m.authentications.WithLabelValues(outcome, reason).Inc()
	}
}

// decisionTook observes how long the decision on a CONNECT took.
func (m *Metrics) decisionTook(took time.Duration) {
	if m != nil {
		m.decision.Observe(took.Seconds())
	}
}

func (m *Metrics) dialed(took time.Duration, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.dialFailures.Inc()
		return
	}
	m.dial.Observe(took.Seconds())
}

func (m *Metrics) proxied(fromClient, toClient int64) {
	if m != nil {
		m.bytes.WithLabelValues("from_client").Add(float64(fromClient))
		m.bytes.WithLabelValues("to_client").Add(float64(toClient))
	}
}

func (m *Metrics) limitHit(kind string) {
	if m != nil {
		m.limited.WithLabelValues(kind).Inc()
	}
}

// sessionsEnded counts n sessions ended for reason.
func (m *Metrics) sessionsEnded(reason EndReason, n int) {
	if m != nil && n > 0 {
		m.ended.WithLabelValues(string(reason)).Add(float64(n))
	}
}

// reauthenticated counts a re-authentication's outcome, refused for
// reason.
func (m *Metrics) reauthenticated(outcome, reason string) {
	if m != nil {
		m.reauths.WithLabelValues(outcome, reason).Inc()
	}
}

// authorized counts a decision on a PUBLISH (subscribe false) or a
// SUBSCRIBE filter.
func (m *Metrics) authorized(subscribe, allowed bool) {
	if m != nil {
		m.authorizations[b2i(subscribe)][b2i(allowed)].Inc()
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
