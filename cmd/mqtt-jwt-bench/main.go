// Command mqtt-jwt-bench loads an MQTT broker, or a proxy in front of one,
// and measures what it gets: connections per second, connection and
// end-to-end message latency, message throughput, and what each
// connection costs the processes named with -pid (CPU time, memory, file
// descriptors, pipes).
//
//	mqtt-jwt-bench connect -addr 127.0.0.1:1883 -c 16 -duration 10s -alg HS256 -secret S
//	mqtt-jwt-bench connect -addr 127.0.0.1:1883 -alg RS256 -key private.pem -invalid -expect refuse
//	mqtt-jwt-bench hold -addr 127.0.0.1:1883 -n 10000 -duration 30s -secret S -pid hop=4242
//	mqtt-jwt-bench hold -addr 127.0.0.1:1883 -n 4000 -partial 11 -duration 3s -secret S -pid hop=4242
//	mqtt-jwt-bench pubsub -addr 127.0.0.1:1883 -pub 2 -sub 2 -size 4096 -rate 2000 -secret S
//	mqtt-jwt-bench report results.jsonl
//
// connect: each of -c workers connects, reads the CONNACK, sends DISCONNECT
// and closes, again and again, for -duration or -count connections. hold:
// -n connections are opened and kept, idle, for -duration; with -partial N
// each sends only the first N bytes of its CONNECT and is kept pending,
// which is what a slow client or a slowloris flood costs. pubsub: -pub
// publishers send -size byte messages stamped with the send time to -sub
// subscribers, as fast as they can or at -rate messages per second in
// all. report: the medians of many runs side by side.
//
// Tokens go in the CONNECT's password (or user name, -from username):
// read from -tokens FILE, or minted with -alg and -secret (HS*) or -key (a
// PEM private key), -pool of them before the run so that signing does not
// load the tool. Every run prints a summary on stderr and one JSON line on
// stdout; latencies are in milliseconds, as p50, p90, p99 and max.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

const usage = `usage:
  mqtt-jwt-bench connect [flags]   connect, CONNACK, DISCONNECT, again, from -c workers
  mqtt-jwt-bench hold [flags]      open -n connections and keep them for -duration (-partial N: pending)
  mqtt-jwt-bench pubsub [flags]    publishers to subscribers, end-to-end latency
  mqtt-jwt-bench report FILE...    medians per scenario and target of the runs' JSON lines
Each takes -h for its flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage means the flags were wrong and the flag package said why.
var errUsage = errors.New("usage")

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	var err error
	switch cmd {
	case "connect":
		err = connectCommand(ctx, args, stdout, stderr)
	case "hold":
		err = holdCommand(ctx, args, stdout, stderr)
	case "pubsub":
		err = pubsubCommand(ctx, args, stdout, stderr)
	case "report":
		err = reportCommand(args, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "mqtt-jwt-bench: unknown command %q\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "mqtt-jwt-bench %s: %v\n", cmd, err)
		return 1
	}
}

// options are the flags every load mode shares.
type options struct {
	Addr     string
	MQTT     string // "3.1.1" or "5"
	Version  byte   // the protocol level MQTT names
	Timeout  time.Duration
	Duration time.Duration
	Tokens   tokenOptions
	// From is the CONNECT field carrying the token: password or username.
	From string
	// ClientPrefix starts every client identifier; the rest is the
	// worker's and the connection's number.
	ClientPrefix string
	// Procs are the processes whose cost the run reports.
	Procs watchedProcs
	// Scenario, Target and Round label the JSON line for report.
	Scenario, Target string
	Round            int
}

// newFlagSet returns the flag set of a load mode with the shared flags
// registered into o; defaultDuration is the mode's -duration.
func newFlagSet(name string, o *options, stderr io.Writer, defaultDuration time.Duration) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Addr, "addr", "127.0.0.1:1883", "broker or proxy `host:port`")
	fs.StringVar(&o.MQTT, "mqtt", "3.1.1", "MQTT version: 3.1.1 or 5")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Second, "bound on each connection's dial, CONNECT and CONNACK")
	fs.DurationVar(&o.Duration, "duration", defaultDuration, "how long the run lasts")
	fs.StringVar(&o.Tokens.File, "tokens", "", "`FILE` of tokens, one a line, used in turn")
	fs.StringVar(&o.Tokens.Alg, "alg", "HS256", "algorithm of minted tokens (HS256, RS256, ES256, ...)")
	fs.StringVar(&o.Tokens.Secret, "secret", "", "HMAC secret to mint HS* tokens with")
	fs.StringVar(&o.Tokens.KeyFile, "key", "", "PEM private key `FILE` to mint RS*, PS*, ES* or EdDSA tokens with")
	fs.DurationVar(&o.Tokens.TTL, "ttl", time.Hour, "minted tokens' lifetime (exp); 0 for no exp")
	fs.IntVar(&o.Tokens.Pool, "pool", 64, "tokens minted before the run and used in turn; 0 mints one per connection during the run")
	fs.BoolVar(&o.Tokens.Invalid, "invalid", false, "break every token's signature")
	fs.StringVar(&o.From, "from", "password", "CONNECT field carrying the token: password or username")
	fs.StringVar(&o.ClientPrefix, "client-prefix", "bench"+strconv.Itoa(os.Getpid()), "client identifier prefix")
	fs.Var(&o.Procs, "pid", "process to measure, as `NAME=PID` (repeatable): CPU time, memory, descriptors")
	fs.StringVar(&o.Scenario, "scenario", "", "scenario label for the JSON line")
	fs.StringVar(&o.Target, "target", "", "target label for the JSON line")
	fs.IntVar(&o.Round, "round", 0, "round number for the JSON line")
	return fs
}

// parse parses args into fs and checks the shared options.
func (o *options) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected arguments: %s\n", fs.Name(), strings.Join(fs.Args(), " "))
		return errUsage
	}
	switch o.MQTT {
	case "3.1.1", "4":
		o.Version = packets.ProtocolV311
	case "5", "5.0":
		o.Version = packets.ProtocolV5
	default:
		return fmt.Errorf("-mqtt %q: want 3.1.1 or 5", o.MQTT)
	}
	if o.From != "password" && o.From != "username" {
		return fmt.Errorf("-from %q: want password or username", o.From)
	}
	if o.Duration < 0 || o.Timeout <= 0 {
		return fmt.Errorf("-duration and -timeout must be positive")
	}
	return nil
}

// result is one run's JSON line. Fields a mode does not measure are left
// out.
type result struct {
	Mode     string  `json:"mode"`
	Scenario string  `json:"scenario,omitempty"`
	Target   string  `json:"target,omitempty"`
	Round    int     `json:"round,omitempty"`
	Addr     string  `json:"addr"`
	MQTT     string  `json:"mqtt"`
	Seconds  float64 `json:"seconds"`
	// Rate is connections per second (connect, and hold while opening) or
	// messages received per second (pubsub).
	Rate    float64        `json:"rate"`
	Latency latencySummary `json:"latency_ms"`

	// Connects counts CONNACKs received, Accepted and Refused split them.
	Connects int64 `json:"connects,omitempty"`
	Accepted int64 `json:"accepted,omitempty"`
	Refused  int64 `json:"refused,omitempty"`
	// Unexpected counts CONNACKs whose outcome -expect did not allow.
	Unexpected int64 `json:"unexpected,omitempty"`
	// Errors counts failures by kind (dial, timeout, closed, protocol).
	Errors     map[string]int64 `json:"errors,omitempty"`
	FirstError string           `json:"first_error,omitempty"`

	// Held is how many connections were still open at the end (hold).
	Held int64 `json:"held,omitempty"`
	// Partial is how many bytes of its ConnectSize-byte CONNECT each held
	// connection sent (hold -partial): they were held pending.
	Partial     int `json:"partial,omitempty"`
	ConnectSize int `json:"connect_size,omitempty"`

	// Published and Received count messages; MBPerSecond is payload
	// received (pubsub).
	Published   int64   `json:"published,omitempty"`
	Received    int64   `json:"received,omitempty"`
	MBPerSecond float64 `json:"mb_per_s,omitempty"`

	// ToolCPUSeconds is this tool's own CPU time: when it nears the
	// machine's cores times Seconds, the tool is the bottleneck.
	ToolCPUSeconds float64               `json:"tool_cpu_s"`
	Procs          map[string]procReport `json:"procs,omitempty"`
}

// newResult starts a result labelled from o.
func newResult(mode string, o *options) *result {
	return &result{Mode: mode, Scenario: o.Scenario, Target: o.Target, Round: o.Round, Addr: o.Addr, MQTT: o.MQTT}
}

// emit writes r's summary to summary and its JSON line to jsonOut.
func (r *result) emit(jsonOut, summary io.Writer) error {
	fmt.Fprintf(summary, "%s %s: %.1fs, %s\n", r.Mode, r.Addr, r.Seconds, r.counts())
	if r.Latency != (latencySummary{}) {
		what := "connect"
		if r.Mode == "pubsub" {
			what = "end-to-end"
		}
		fmt.Fprintf(summary, "  %s latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", what, r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max)
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(summary, "  errors: %v (first: %s)\n", r.Errors, r.FirstError)
	}
	for name, p := range r.Procs {
		fmt.Fprintf(summary, "  %s (pid %d): cpu %.2fs", name, p.PID, p.CPUSeconds)
		if p.CPUMicrosPerOp > 0 {
			fmt.Fprintf(summary, ", %.1f µs per op", p.CPUMicrosPerOp)
		}
		if r.Mode == "hold" {
			fmt.Fprintf(summary, ", rss %d -> %d KiB (%.0f B/conn), fds %d -> %d (%.2f/conn), pipes %d",
				p.RSSBefore>>10, p.RSSAfter>>10, p.BytesPerConn, p.FDsBefore, p.FDsAfter, p.FDsPerConn, p.PipesAfter)
		}
		fmt.Fprintln(summary)
	}
	fmt.Fprintf(summary, "  tool cpu %.2fs\n", r.ToolCPUSeconds)
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	_, err = fmt.Fprintf(jsonOut, "%s\n", line)
	return err
}

func (r *result) counts() string {
	switch r.Mode {
	case "pubsub":
		return fmt.Sprintf("%d published, %d received, %.0f msg/s, %.2f MB/s", r.Published, r.Received, r.Rate, r.MBPerSecond)
	case "hold":
		if r.Partial > 0 {
			return fmt.Sprintf("%d held pending of %d opened, each with %d bytes of its %d-byte CONNECT, opened at %.0f/s", r.Held, r.Accepted, r.Partial, r.ConnectSize, r.Rate)
		}
		return fmt.Sprintf("%d held of %d accepted (%d refused), opened at %.0f/s", r.Held, r.Accepted, r.Refused, r.Rate)
	default:
		return fmt.Sprintf("%d connects (%d accepted, %d refused, %d unexpected), %.0f/s", r.Connects, r.Accepted, r.Refused, r.Unexpected, r.Rate)
	}
}

// errorCounter counts failures by kind and keeps the first message.
type errorCounter struct {
	counts map[string]int64
	first  string
}

func (e *errorCounter) add(err error) {
	if e.counts == nil {
		e.counts = make(map[string]int64)
	}
	e.counts[errorKind(err)]++
	if e.first == "" {
		e.first = err.Error()
	}
}

func (e *errorCounter) merge(o *errorCounter) {
	for kind, n := range o.counts {
		if e.counts == nil {
			e.counts = make(map[string]int64)
		}
		e.counts[kind] += n
	}
	if e.first == "" {
		e.first = o.first
	}
}

// errorKind sorts a failure for the counts: it could not connect (dial),
// took too long (timeout), was cut off (closed), or got something that is
// not MQTT (protocol).
func errorKind(err error) string {
	var opErr *net.OpError
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "dial"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "closed"
	case errors.Is(err, errMalformed), errors.Is(err, errPacketTooLarge):
		return "protocol"
	default:
		return "other"
	}
}

func roundTo(v float64, decimals int) float64 {
	p := math.Pow10(decimals)
	return math.Round(v*p) / p
}

// perSecond is n over d, 0 for an empty interval.
func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return roundTo(float64(n)/d.Seconds(), 1)
}
