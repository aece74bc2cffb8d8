package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// fleetRules is configs/authorization.yaml's authorization section, with
// an HMAC authenticator in front of it whose tokens carry their rules in
// the claim acl.
const fleetRules = "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n" +
	"authorization:\n" +
	"  rules:\n" +
	"    - {permission: deny, action: publish, topic: \"devices/${claims.sub}/config\"}\n" +
	"    - {permission: allow, action: all, topic: \"devices/${claims.sub}/#\"}\n" +
	"    - {permission: allow, action: subscribe, topics: [\"eq firmware/#\", \"firmware/latest\"], qos: [0, 1]}\n" +
	"    - {permission: allow, action: publish, topic: \"status/${clientid}\", retain: true}\n" +
	"  no_match: deny\n"

// decisionLine is the line verify prints for one request, its columns
// separated by single spaces (verify aligns them with more).
func decisionLine(stdout, action, topic string) string {
	for line := range strings.Lines(stdout) {
		fields := strings.Fields(line)
		if len(fields) > 2 && fields[0] == action && fields[1] == topic {
			return strings.Join(fields, " ")
		}
	}
	return ""
}

// TestVerifyAuthorization: -publish and -subscribe are decided for the
// accepted client by its token's rules (either of EMQX's formats, in the
// claim its authenticator names), then the configured ones, then
// no_match; each line names the rule that decided, filled in for the
// client.
func TestVerifyAuthorization(t *testing.T) {
	now := time.Now()
	// EMQX 5.5's list of rules.
	listToken := hs256(t, now, "dev1", map[string]any{"acl": []any{
		map[string]any{"permission": "deny", "action": "publish", "topic": "devices/${clientid}/secret"},
		map[string]any{"permission": "allow", "action": "subscribe", "topic": "eq alerts/#", "qos": []any{0}},
		map[string]any{"permission": "allow", "action": "publish", "topic": "users/${username}/out"},
	}})
	// EMQX 4's allow lists.
	listsToken := hs256(t, now, "dev1", map[string]any{"acl": map[string]any{
		"pub": []any{"up/%c"}, "sub": []any{"down/%c/+"}, "all": []any{"shared/%u/#"},
	}})
	noClaim := hs256(t, now, "dev1", nil)
	// The devices' authenticator passes for want of a password; the
	// users' accepts, and reads its rules from perms, not acl.
	chain := "  - {name: devices, mechanism: jwt, algorithm: hmac-based, secret: secret, on_missing_jwt: ignore, acl: {claim: other}}\n" +
		"  - {name: users, mechanism: jwt, from: username, algorithm: hmac-based, secret: secret, acl: {claim: perms}}\n"
	permsToken := hs256(t, now, "alice", map[string]any{
		"perms": []any{map[string]any{"permission": "allow", "action": "all", "topic": "home/${claims.sub}/#"}},
		"other": []any{map[string]any{"permission": "deny", "action": "all", "topic": "#"}},
		"acl":   []any{map[string]any{"permission": "deny", "action": "all", "topic": "#"}},
	})

	cases := []struct {
		name     string
		auth     string
		args     []string
		wantCode int
		want     map[[2]string]string // action and topic: the rest of its line
	}{
		{"rules list, before the configured rules", fleetRules,
			[]string{"-client-id", "dev1", "-username", "bob",
				"-publish", "devices/dev1/secret", "-publish", "devices/dev1/temp", "-publish", "users/bob/out",
				"-subscribe", "alerts/#", "-subscribe", "alerts/x", listToken}, exitDenied,
			map[[2]string]string{
				{"publish", "devices/dev1/secret"}: `0 false deny token rule 0: deny publish "devices/${clientid}/secret" (for this client: "devices/dev1/secret")`,
				{"publish", "devices/dev1/temp"}:   `0 false allow config rule 1: allow all "devices/${claims.sub}/#" (for this client: "devices/dev1/#")`,
				{"publish", "users/bob/out"}:       `0 false allow token rule 2: allow publish "users/${username}/out" (for this client: "users/bob/out")`,
				{"subscribe", "alerts/#"}:          `0 - allow token rule 1: allow subscribe "eq alerts/#" qos 0`,
				{"subscribe", "alerts/x"}:          `0 - deny no rule applies (no_match: deny)`,
			}},
		{"allow lists: what they do not name is denied", fleetRules,
			[]string{"-client-id", "dev1", "-username", "bob",
				"-publish", "up/dev1", "-subscribe", "down/dev1/+", "-subscribe", "shared/bob/x/#",
				"-publish", "up/dev2", "-publish", "devices/dev1/temp", listsToken}, exitDenied,
			map[[2]string]string{
				{"publish", "up/dev1"}:           `0 false allow token rule 0: allow publish "up/${clientid}" (for this client: "up/dev1")`,
				{"subscribe", "down/dev1/+"}:     `0 - allow token rule 1: allow subscribe "down/${clientid}/+" (for this client: "down/dev1/+")`,
				{"subscribe", "shared/bob/x/#"}:  `0 - allow token rule 2: allow all "shared/${username}/#" (for this client: "shared/bob/#")`,
				{"publish", "up/dev2"}:           `0 false deny token: not named by the acl claim's pub, sub or all lists`,
				{"publish", "devices/dev1/temp"}: `0 false deny token: not named by the acl claim's pub, sub or all lists`,
			}},
		{"configured rules: eq, $share, qos and retain", fleetRules,
			[]string{"-client-id", "dev1", "-qos", "1", "-retain",
				"-publish", "devices/dev1/config", "-publish", "status/dev1", "-publish", "status/dev2",
				"-subscribe", "$share/g/devices/dev1/#", "-subscribe", "$share/g/devices/#",
				"-subscribe", "firmware/#", "-subscribe", "firmware/beta", noClaim}, exitDenied,
			map[[2]string]string{
				{"publish", "devices/dev1/config"}:       `1 true deny config rule 0: deny publish "devices/${claims.sub}/config" (for this client: "devices/dev1/config")`,
				{"publish", "status/dev1"}:               `1 true allow config rule 3: allow publish "status/${clientid}" retain true (for this client: "status/dev1")`,
				{"publish", "status/dev2"}:               `1 true deny no rule applies (no_match: deny)`,
				{"subscribe", "$share/g/devices/dev1/#"}: `1 - allow config rule 1: allow all "devices/${claims.sub}/#" (for this client: "devices/dev1/#")`,
				{"subscribe", "$share/g/devices/#"}:      `1 - deny no rule applies (no_match: deny)`,
				{"subscribe", "firmware/#"}:              `1 - allow config rule 2: allow subscribe "eq firmware/#" "firmware/latest" qos 0,1`,
				{"subscribe", "firmware/beta"}:           `1 - deny no rule applies (no_match: deny)`,
			}},
		{"qos condition", fleetRules,
			[]string{"-qos", "2", "-subscribe", "firmware/latest", noClaim}, exitDenied,
			map[[2]string]string{{"subscribe", "firmware/latest"}: `2 - deny no rule applies (no_match: deny)`}},
		{"a placeholder without a safe value", fleetRules,
			[]string{"-publish", "devices/a/b/temp", "-subscribe", "devices/a/b/#", hs256(t, now, "a/b", nil)}, exitDenied,
			map[[2]string]string{
				{"publish", "devices/a/b/temp"}: `0 false deny config rule 0: deny publish "devices/${claims.sub}/config" (for this client: every topic: a placeholder has no safe value)`,
				{"subscribe", "devices/a/b/#"}:  `0 - deny no rule applies (no_match: deny)`,
			}},
		{"every request allowed", fleetRules,
			[]string{"-client-id", "dev1", "-publish", "devices/dev1/temp", "-subscribe", "devices/dev1/cmd/+", noClaim}, 0,
			map[[2]string]string{
				{"publish", "devices/dev1/temp"}:    `0 false allow config rule 1: allow all "devices/${claims.sub}/#" (for this client: "devices/dev1/#")`,
				{"subscribe", "devices/dev1/cmd/+"}: `0 - allow config rule 1: allow all "devices/${claims.sub}/#" (for this client: "devices/dev1/#")`,
			}},
		{"no authorization section: no_match allows", "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n",
			[]string{"-publish", "anything", noClaim}, 0,
			map[[2]string]string{{"publish", "anything"}: `0 false allow no rule applies (no_match: allow)`}},
		{"the accepting authenticator's claim", chain,
			[]string{"-from", "username", "-publish", "home/alice/lamp", "-subscribe", "home/bob/#", permsToken}, 0,
			map[[2]string]string{
				{"publish", "home/alice/lamp"}: `0 false allow token rule 0: allow all "home/${claims.sub}/#" (for this client: "home/alice/#")`,
				{"subscribe", "home/bob/#"}:    `0 - allow no rule applies (no_match: allow)`,
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCommand(t, append([]string{"verify", "-config", writeConfig(t, tc.auth)}, tc.args...)...)
			denied := 0
			for _, rest := range tc.want {
				if strings.Fields(rest)[2] == "deny" { // after QOS and RETAIN
					denied++
				}
			}
			wantStderr := ""
			if denied > 0 {
				wantStderr = fmt.Sprintf("mqtt-jwt-proxy verify: denied: %d of %d requests\n", denied, len(tc.want))
			}
			if code != tc.wantCode || stderr != wantStderr {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr, tc.wantCode, wantStderr)
			}
			if !strings.Contains(stdout, "accepted by ") || !strings.Contains(stdout, "\nACTION ") {
				t.Errorf("stdout lacks the acceptance or the decisions' header:\n%s", stdout)
			}
			for request, want := range tc.want {
				if got := decisionLine(stdout, request[0], request[1]); got != request[0]+" "+request[1]+" "+want {
					t.Errorf("%s %s:\n got %q\nwant %q", request[0], request[1], got, request[0]+" "+request[1]+" "+want)
				}
			}
			if lines := strings.Count(stdout[strings.Index(stdout, "\nACTION "):], "\n") - 2; lines != len(tc.want) {
				t.Errorf("%d decision lines, want %d:\n%s", lines, len(tc.want), stdout)
			}
		})
	}
}

// TestVerifyAuthorizationRefusals: requests are decided only for an
// accepted token; an acl claim that cannot be read refuses the token, as
// the proxy refuses such a CONNECT, with or without requests; a faulty
// configured rule is a
// configuration error; -qos and -retain must have requests to apply to.
func TestVerifyAuthorizationRefusals(t *testing.T) {
	now := time.Now()
	badList := hs256(t, now, "dev1", map[string]any{"acl": []any{
		map[string]any{"permission": "allow", "action": "publish", "topic": "t/#", "clientid_re": "^dev"},
	}})
	badLists := hs256(t, now, "dev1", map[string]any{"acl": map[string]any{"pub": []any{"t/1"}, "publish": []any{"t/2"}}})
	badConfig := "  - {mechanism: jwt, algorithm: hmac-based, secret: secret}\n" +
		"authorization:\n  rules: [{permission: allow, action: all, topic: \"a/#/b\"}]\n"
	cases := []verifyCase{
		{"token refused: nothing decided", fleetRules,
			[]string{"-publish", "devices/dev1/temp", hs256(t, now, "dev1", map[string]any{"exp": 1})}, 1,
			[]string{"refused by jwt (token_expired)"}, "mqtt-jwt-proxy verify: token refused: token_expired\n"},
		{"malformed rules list", fleetRules, []string{"-publish", "t/1", badList}, 1,
			[]string{`rules (jwt): token_malformed: claim "acl": [0].clientid_re: EMQX's client conditions are not supported`,
				"refused by jwt (token_malformed): CONNACK 0x86 bad user name or password (MQTT 5), return code 4 (MQTT 3.1.1)"},
			"mqtt-jwt-proxy verify: token refused: token_malformed\n"},
		{"malformed allow lists", fleetRules, []string{"-subscribe", "t/1", badLists}, 1,
			[]string{`rules (jwt): token_malformed: claim "acl": publish: unknown member`, "refused by jwt (token_malformed)"},
			"mqtt-jwt-proxy verify: token refused: token_malformed\n"},
		{"without requests the claim is read all the same", fleetRules, []string{badList}, 1,
			[]string{`rules (jwt): token_malformed: claim "acl": [0].clientid_re`, "refused by jwt (token_malformed)"},
			"mqtt-jwt-proxy verify: token refused: token_malformed\n"},
		{"faulty configured rule", badConfig, []string{"-publish", "a", hs256(t, now, "dev1", nil)}, 1,
			nil, `authorization.rules[0].topics[0]: "a/#/b" is not a topic filter`},
		{"-qos over 2", fleetRules, []string{"-qos", "3", "-publish", "a", badList}, 2, nil, "-qos 3: want 0, 1 or 2"},
		{"-qos without requests", fleetRules, []string{"-qos", "1", badList}, 2, nil, "-qos is the QoS of -publish and -subscribe"},
		{"-retain without -publish", fleetRules, []string{"-retain", "-subscribe", "a", badList}, 2, nil, "-retain is the retain flag of -publish"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if stdout := tc.check(t); strings.Contains(stdout, "ACTION") {
				t.Errorf("decisions printed for a client that was not accepted:\n%s", stdout)
			}
		})
	}
}
