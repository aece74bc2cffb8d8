package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// sessionsTimeout bounds one call of the sessions API.
const sessionsTimeout = 30 * time.Second

// maxErrorBody bounds what is read of an answer that is not a success.
const maxErrorBody = 4 << 10

const sessionsUsage = `usage: mqtt-jwt-proxy sessions list -admin URL -token-file FILE [filters] [-json]
       mqtt-jwt-proxy sessions kick -admin URL -token-file FILE (filters | -all)
Lists the proxy's authenticated sessions, or ends them (a framed MQTT 5 session
gets DISCONNECT 0x98, administrative action), through the sessions API of the admin
endpoint (metrics.bind, with metrics.admin_token_file or admin_token_env).
The filters select sessions whose field equals the value given; kick needs at
least one, or -all. Run 'mqtt-jwt-proxy sessions list -h' for the flags.
`

// sessionsCommand runs "sessions list" and "sessions kick".
func sessionsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var sub string
	if len(args) > 0 {
		sub, args = args[0], args[1:]
	}
	switch {
	case sub == "list" || sub == "kick":
	case isHelpFlag(sub):
		fmt.Fprint(stderr, sessionsUsage)
		return flag.ErrHelp
	default:
		what := "list or kick is required"
		if sub != "" {
			what = fmt.Sprintf("unknown subcommand %q: want list or kick", sub)
		}
		fmt.Fprintf(stderr, "mqtt-jwt-proxy sessions: %s\nRun 'mqtt-jwt-proxy sessions -h' for usage.\n", what)
		return errUsage
	}

	synopsis, description := "list -admin URL -token-file FILE [-client-id ID] [-username NAME] [-sub SUB] [-listener NAME] [-remote ADDRESS] [-json]",
		"Lists the authenticated sessions the filters select (all without one), in order of connection."
	if sub == "kick" {
		synopsis, description = "kick -admin URL -token-file FILE (-client-id ID | -username NAME | -sub SUB | -listener NAME | -remote ADDRESS ... | -all)",
			"Ends the sessions every filter given selects (a framed MQTT 5 session gets\nDISCONNECT 0x98, administrative action) and prints how many."
	}
	fs := newFlagSet("sessions", synopsis, description, stderr)
	admin := fs.String("admin", "", "the admin endpoint's base `URL`, such as http://127.0.0.1:9100 (metrics.bind)")
	tokenFile := fs.String("token-file", "", "a `FILE` holding the admin token (metrics.admin_token_file); one trailing newline is dropped")
	query := url.Values{}
	for _, f := range []struct{ flag, param, usage string }{
		{"client-id", filterClientID, "select the sessions of client identifier `ID`"},
		{"username", filterUsername, "select the sessions of user name `NAME`, as list shows it"},
		{"sub", filterSubject, "select the sessions whose token's sub claim is `SUB`"},
		{"listener", filterListener, "select the sessions on the listener called `NAME` (listeners[].name)"},
		{"remote", filterRemote, "select the sessions from `ADDRESS`: an IP for every connection from it, IP:PORT for one"},
	} {
		fs.Func(f.flag, f.usage, func(v string) error {
			if v == "" {
				return errors.New("empty: leave the filter out to select any")
			}
			query.Set(f.param, v)
			return nil
		})
	}
	asJSON, all := new(bool), new(bool)
	if sub == "list" {
		asJSON = fs.Bool("json", false, "print the API's JSON array as it came")
	} else {
		all = fs.Bool("all", false, "end every session; not with a filter")
	}
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	switch {
	case *admin == "" || *tokenFile == "":
		return usageError(fs, "-admin URL and -token-file FILE are required")
	case sub == "kick" && *all && len(query) > 0:
		return usageError(fs, "-all ends every session: give it without filters")
	case sub == "kick" && !*all && len(query) == 0:
		return usageError(fs, "give a filter (-client-id, -username, -sub, -listener, -remote), or -all to end every session")
	}
	endpoint, err := sessionsURL(*admin)
	if err != nil {
		return usageError(fs, "-admin: %v", err)
	}
	token, err := configs.ReadSecretFile(*tokenFile)
	if err != nil {
		return fmt.Errorf("-token-file: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, sessionsTimeout)
	defer cancel()
	if sub == "kick" {
		if *all {
			query.Set(allParam, "true")
		}
		var ended endedJSON
		if err := callSessionsAPI(ctx, http.MethodDelete, endpoint, query, token, &ended); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "ended %d %s\n", ended.Ended, plural(ended.Ended, "session"))
		return nil
	}
	var raw json.RawMessage
	if err := callSessionsAPI(ctx, http.MethodGet, endpoint, query, token, &raw); err != nil {
		return err
	}
	if *asJSON {
		_, err := fmt.Fprintf(stdout, "%s\n", raw)
		return err
	}
	var sessions []sessionJSON
	if err := json.Unmarshal(raw, &sessions); err != nil {
		return fmt.Errorf("the admin endpoint's answer is not a list of sessions: %w", err)
	}
	printSessions(stdout, sessions)
	return nil
}

// sessionsURL is the sessions API's URL under the admin endpoint's base.
func sessionsURL(base string) (*url.URL, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http or https URL, such as http://127.0.0.1:9100", base)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: give the endpoint's base URL, without a query", base)
	}
	return u.JoinPath("sessions"), nil
}

// callSessionsAPI sends method to endpoint with the filters of query and
// decodes a success into answer; any other answer is an error that says
// what the API said.
func callSessionsAPI(ctx context.Context, method string, endpoint *url.URL, query url.Values, token string, answer any) error {
	u := *endpoint
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var apiErr errorJSON
		detail := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &apiErr) == nil && apiErr.Error != "" {
			detail = apiErr.Error
		}
		if resp.StatusCode == http.StatusNotFound {
			detail = "the sessions API is off (no metrics.admin_token_file or admin_token_env), or -admin is not the admin endpoint (metrics.bind)"
		}
		return fmt.Errorf("%s %s: %s: %s", method, endpoint.Redacted(), resp.Status, detail)
	}
	if err := json.NewDecoder(resp.Body).Decode(answer); err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, endpoint.Redacted(), err)
	}
	return nil
}

// printSessions writes one line per session, under a header.
func printSessions(w io.Writer, sessions []sessionJSON) {
	if len(sessions) == 0 {
		fmt.Fprintln(w, "no sessions")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT_ID\tUSERNAME\tSUB\tJTI\tLISTENER\tREMOTE\tCONNECTED_AT\tEXPIRES_AT\tBYTES_FROM_CLIENT\tBYTES_TO_CLIENT")
	for _, s := range sessions {
		expires := "-"
		if s.ExpiresAt != nil {
			expires = s.ExpiresAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n",
			sessionCell(s.ClientID), sessionCell(s.Username), sessionCell(s.Subject), sessionCell(s.TokenID),
			sessionCell(s.Listener), sessionCell(s.Remote), s.ConnectedAt.UTC().Format(time.RFC3339), expires,
			s.BytesFromClient, s.BytesToClient)
	}
	tw.Flush()
}

// sessionCell is a session's field in the table: "-" when empty.
func sessionCell(s string) string {
	if s == "" {
		return "-"
	}
	return showValue(s)
}

// plural is noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return noun
	}
	return noun + "s"
}
