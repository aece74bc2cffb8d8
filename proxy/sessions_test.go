package proxy

import "testing"

func TestSessionFilterMatches(t *testing.T) {
	s := SessionInfo{ClientID: "dev-1", Username: "alice", Subject: "user-1", Listener: "tcp", Remote: "192.0.2.7:50312"}
	v6 := SessionInfo{ClientID: "dev-2", Listener: "tcp", Remote: "[2001:db8::1]:50312"}
	cases := []struct {
		name   string
		filter SessionFilter
		info   SessionInfo
		want   bool
	}{
		{"zero selects all", SessionFilter{}, s, true},
		{"client id", SessionFilter{ClientID: "dev-1"}, s, true},
		{"another client id", SessionFilter{ClientID: "dev-10"}, s, false},
		{"prefix is no match", SessionFilter{ClientID: "dev"}, s, false},
		{"username", SessionFilter{Username: "alice"}, s, true},
		{"subject", SessionFilter{Subject: "user-1"}, s, true},
		{"listener", SessionFilter{Listener: "tls"}, s, false},
		{"every field must match", SessionFilter{ClientID: "dev-1", Subject: "user-2"}, s, false},
		{"every field matches", SessionFilter{ClientID: "dev-1", Subject: "user-1", Listener: "tcp", Remote: "192.0.2.7"}, s, true},
		{"remote host", SessionFilter{Remote: "192.0.2.7"}, s, true},
		{"remote host and port", SessionFilter{Remote: "192.0.2.7:50312"}, s, true},
		{"remote, another port", SessionFilter{Remote: "192.0.2.7:50313"}, s, false},
		{"remote, another host", SessionFilter{Remote: "192.0.2.70"}, s, false},
		{"remote IPv6 host", SessionFilter{Remote: "2001:db8::1"}, v6, true},
		{"remote IPv6 host and port", SessionFilter{Remote: "[2001:db8::1]:50312"}, v6, true},
		{"remote IPv6 with brackets, no port", SessionFilter{Remote: "[2001:db8::1]"}, v6, false},
		{"empty remote field", SessionFilter{Remote: "192.0.2.7"}, SessionInfo{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.filter.Matches(tc.info); got != tc.want {
				t.Errorf("%+v.Matches(%+v) = %v, want %v", tc.filter, tc.info, got, tc.want)
			}
		})
	}
	if !(SessionFilter{}).IsZero() || (SessionFilter{Remote: "192.0.2.7"}).IsZero() {
		t.Error("IsZero is wrong")
	}
}
