package main

import (
	"context"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn/acl"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/proxy"
)

// maxStdinToken bounds what verify reads for TOKEN "-". It is well above
// the largest token a CONNECT field can carry (65,535 bytes), so such a
// token is still read whole and refused by the chain, not cut short here.
const maxStdinToken = 1 << 20

// verifyTimeout bounds the decision, which may wait on a JWKS download.
const verifyTimeout = 30 * time.Second

// errTokenRefused is returned by verify when the chain refuses the token;
// the reason has already been printed.
var errTokenRefused = errors.New("token refused")

// errRequestDenied is returned by verify when the token is accepted and
// the client is denied some -publish or -subscribe; the decisions have
// already been printed. The command exits with exitDenied.
var errRequestDenied = errors.New("denied")

// exitDenied is verify's exit code when the token is accepted and some
// request denied: neither success nor the refusal's 1, so that a script
// asserting a denial is not satisfied by a token that was never accepted.
const exitDenied = 3

func verifyCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	flags := newFlagSet("verify", "-config FILE [-client-id X] [-username Y | -from username] [-cert-common-name CN] [-publish TOPIC]... [-subscribe FILTER]... [-qos N] [-retain] TOKEN",
		"Runs TOKEN through the configured authenticators as if a client sent it as its\n"+
			"password, and says which one accepted or why it was refused. TOKEN - reads stdin.\n"+
			"An acl claim that cannot be read refuses the token, as the proxy refuses the CONNECT.\n"+
			"With -publish or -subscribe, it then says whether the accepted client may do each,\n"+
			"and which rule decided. Exit 0: accepted (and every request allowed); 1: refused;\n"+
			"3: accepted, and some request denied.", stderr)
	configPath := configFlag(flags)
	clientID := flags.String("client-id", "", "the CONNECT's client ID, for ${clientid} in verify_claims and topic rules")
	username := flags.String("username", "", "the CONNECT's user name (default: none, or TOKEN when an authenticator reads from: username)")
	certCN := flags.String("cert-common-name", "", "as if the client presented a TLS certificate the listener verified, with this common name, for ${cert_common_name} and certificate authenticators")
	certSubject := flags.String("cert-subject", "", "that certificate's subject, for ${cert_subject}, such as CN=device-1,O=Example (default: CN= and -cert-common-name)")
	from := flags.String("from", "", "send TOKEN in one `field` only: password, or username (and no password) (default: the password, and the username too when an authenticator reads from: username)")
	var requests []acl.Request
	flags.Var(&requestFlag{action: acl.Publish, requests: &requests}, "publish",
		"once the token is accepted, may the client publish to `TOPIC`? Repeatable")
	flags.Var(&requestFlag{action: acl.Subscribe, requests: &requests}, "subscribe",
		"once the token is accepted, may the client subscribe to `FILTER` ($share/GROUP/FILTER included)? Repeatable")
	qos := flags.Uint("qos", 0, "the QoS of every -publish and -subscribe: `N` is 0, 1 or 2")
	retain := flags.Bool("retain", false, "set the retain flag of every -publish")
	if err := parseFlags(flags, args, 1); err != nil {
		return err
	}
	switch {
	case *configPath == "" || flags.NArg() != 1:
		return usageError(flags, "-config FILE (or $%s) and TOKEN (or - to read it from stdin) are required", envConfig)
	case *from != "" && *from != "password" && *from != "username":
		return usageError(flags, "-from %q: want password or username", *from)
	case *from == "username" && flagWasSet(flags, "username"):
		return usageError(flags, "-from username sends TOKEN as the user name; -username cannot also be given")
	case *qos > 2:
		return usageError(flags, "-qos %d: want 0, 1 or 2", *qos)
	case flagWasSet(flags, "qos") && len(requests) == 0:
		return usageError(flags, "-qos is the QoS of -publish and -subscribe; give one of them")
	case *retain && !flagWasSet(flags, "publish"):
		return usageError(flags, "-retain is the retain flag of -publish; give one")
	}
	for i := range requests {
		requests[i].QoS = byte(*qos)
		requests[i].Retain = *retain && requests[i].Action == acl.Publish
	}
	token := flags.Arg(0)
	if token == "-" {
		data, err := io.ReadAll(io.LimitReader(stdin, maxStdinToken))
		if err != nil {
			return fmt.Errorf("read token from stdin: %w", err)
		}
		// A trailing newline from echo or a file is not part of the token.
		token = strings.TrimSpace(string(data))
	}

	cfg, err := configs.Load(*configPath)
	if err != nil {
		return err
	}
	chain, err := authn.New(cfg.Authentication)
	if err != nil {
		return fmt.Errorf("config %s: %w", *configPath, err)
	}
	defer chain.Close()
	rules, err := acl.FromConfig(cfg.Authorization)
	if err != nil {
		return fmt.Errorf("config %s: %w", *configPath, err)
	}

	var usernameGiven *string
	if flagWasSet(flags, "username") {
		usernameGiven = username
	}
	ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	req := verifyRequest(cfg.Authentication, token, *clientID, usernameGiven, *from)
	if flagWasSet(flags, "cert-common-name") || flagWasSet(flags, "cert-subject") {
		req.CertCommonName, req.CertSubject, req.CertVerified = *certCN, *certSubject, true
		if !flagWasSet(flags, "cert-subject") {
			req.CertSubject = pkix.Name{CommonName: *certCN}.String()
		}
	}
	steps := chain.Explain(ctx, req)
	printSteps(stdout, steps)
	decider, reason := decision(steps)
	var policy *acl.Policy
	if reason == "" {
		// The client's rules are compiled as the proxy compiles them when
		// it accepts a CONNECT: a malformed acl claim refuses it.
		id := steps[len(steps)-1].Identity
		policy, err = rules.Compile(acl.Client{Request: &req, Claims: id.Claims, ACLClaim: id.ACLClaim})
		if err != nil {
			fmt.Fprintf(stdout, "rules (%s): %v\n", decider, err)
			reason = authn.ReasonOf(err)
		}
	}
	printDecision(stdout, steps, decider, reason)
	if reason != "" {
		return fmt.Errorf("%w: %s", errTokenRefused, reason)
	}
	if len(requests) == 0 {
		return nil
	}
	if denied := printAuthorizations(stdout, policy, requests); denied > 0 {
		return fmt.Errorf("%w: %d of %d requests", errRequestDenied, denied, len(requests))
	}
	return nil
}

// requestFlag is -publish or -subscribe: each use adds a request of its
// action to requests, which both flags share, so that the decisions are
// printed in the order the flags were given.
type requestFlag struct {
	action   acl.Action
	requests *[]acl.Request
}

func (f *requestFlag) String() string { return "" }

func (f *requestFlag) Set(topic string) error {
	*f.requests = append(*f.requests, acl.Request{Action: f.action, Topic: topic})
	return nil
}

// printAuthorizations writes one line per request: what was asked, the
// decision, and the rule that made it (or why none did). It returns how
// many were denied.
func printAuthorizations(w io.Writer, policy *acl.Policy, requests []acl.Request) (denied int) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tTOPIC\tQOS\tRETAIN\tDECISION\tRULE")
	for _, r := range requests {
		d := policy.Allow(r)
		verdict := "deny"
		if d.Allowed {
			verdict = "allow"
		} else {
			denied++
		}
		retain := "-"
		if r.Action == acl.Publish {
			retain = strconv.FormatBool(r.Retain)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.Action, showValue(r.Topic), r.QoS, retain, verdict,
			strings.TrimPrefix(d.String(), verdict+": "))
	}
	tw.Flush()
	return denied
}

// showValue is a value as a column of a table: as given, or quoted when
// it is empty or holds a space or a character that does not print (a
// terminal escape sequence in a client identifier stays text).
func showValue(s string) string {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !strconv.IsPrint(r) }) {
		return strconv.Quote(s)
	}
	return s
}

// verifyRequest is the CONNECT a client holding token would send. With
// from "password" or "username" the token is in that field only. With
// from "" it is the password and, when no username is given and some
// authenticator reads the token from the username, the username too, so
// every authenticator sees it wherever it looks.
func verifyRequest(auths []configs.Authenticator, token, clientID string, username *string, from string) authn.Request {
	req := authn.Request{ClientID: clientID}
	if from == "username" {
		req.Username, req.HasUsername = token, true
		return req
	}
	req.Password, req.HasPassword = []byte(token), true
	switch {
	case username != nil:
		req.Username, req.HasUsername = *username, true
	case from == "" && readsUsername(auths):
		req.Username, req.HasUsername = token, true
	}
	return req
}

func readsUsername(auths []configs.Authenticator) bool {
	for _, a := range auths {
		if a.From == "username" {
			return true
		}
	}
	return false
}

// printSteps writes one line per step.
func printSteps(w io.Writer, steps []authn.Step) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AUTHENTICATOR\tOUTCOME\tREASON\tDETAIL")
	for _, s := range steps {
		reason, detail := "-", ""
		if s.Outcome == authn.OutcomeAccept {
			detail = identityDetail(s.Identity)
		} else if s.Err != nil {
			if r := authn.ReasonOf(s.Err); r != "" {
				reason = string(r)
			}
			detail = strings.TrimPrefix(refusalDetail(s.Err), reason+": ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Authenticator, s.Outcome, reason, detail)
	}
	tw.Flush()
}

// printDecision writes the decision, by decider for reason ("" when it
// accepted), with the CONNACK a client would get, after the hints that
// explain a refusal.
func printDecision(w io.Writer, steps []authn.Step, decider string, reason authn.RefuseReason) {
	if reason == "" {
		fmt.Fprintf(w, "accepted by %s: %s\n", decider, describeConnack(packets.Success))
		return
	}
	// Hints explain a refusal. An authenticator that passed for want of
	// a token may well see the token in the other field when a later one,
	// which reads that field, accepts it: no hint then.
	for _, s := range steps {
		if hint := authn.HintOf(s.Err); hint != "" {
			fmt.Fprintf(w, "hint (%s): %s\n", s.Authenticator, hint)
		}
	}
	by := ""
	if decider != "" {
		by = " by " + decider
	}
	fmt.Fprintf(w, "refused%s (%s): %s\n", by, reason, describeConnack(proxy.RefuseCode(reason)))
}

// decision is the chain's verdict as Verify reaches it: the first
// authenticator that accepts or refuses decides (reason is empty when it
// accepted); when every one passes, the client is refused with
// ErrNoAuthenticatorAccepted and no authenticator decided.
func decision(steps []authn.Step) (authenticator string, reason authn.RefuseReason) {
	for _, s := range steps {
		switch s.Outcome {
		case authn.OutcomeAccept:
			return s.Authenticator, ""
		case authn.OutcomeRefuse:
			if r := authn.ReasonOf(s.Err); r != "" {
				return s.Authenticator, r
			}
			// A refusal without a reason is an internal failure, which the
			// proxy answers as not authorized.
			return s.Authenticator, authn.ErrNoAuthenticatorAccepted
		}
	}
	return "", authn.ErrNoAuthenticatorAccepted
}

// refusalDetail is err without the authenticator, which has a column of
// its own.
func refusalDetail(err error) string {
	refusal, ok := errors.AsType[*authn.RefuseError](err)
	switch {
	case !ok:
		return err.Error()
	case refusal.Err != nil:
		return refusal.Err.Error()
	default:
		return ""
	}
}

func identityDetail(id authn.Identity) string {
	exp := "none"
	if !id.Expiry.IsZero() {
		exp = id.Expiry.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("sub=%s exp=%s", strconv.Quote(id.Subject), exp)
}

// describeConnack names code as an MQTT 5 client and an MQTT 3.1.1 client
// see it.
func describeConnack(code packets.ReasonCode) string {
	v3, _ := code.V3ReturnCode() // every code verify reports has a v3 twin
	return fmt.Sprintf("CONNACK 0x%02X %s (MQTT 5), return code %d (MQTT 3.1.1)", byte(code), code, v3)
}
