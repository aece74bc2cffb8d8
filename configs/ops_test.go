package configs

import (
	"runtime"
	"strings"
	"testing"
)

func TestMetricsSection(t *testing.T) {
	cases := []struct {
		name    string
		section string
		want    Metrics
		wantErr []string // every one must appear in the error; none means valid
	}{
		{name: "absent", section: "", want: Metrics{}},
		{name: "bind", section: "metrics: {bind: \"127.0.0.1:9100\"}\n", want: Metrics{Bind: "127.0.0.1:9100"}},
		{name: "bind and pprof", section: "metrics: {bind: \":9100\", pprof: true}\n", want: Metrics{Bind: ":9100", Pprof: true}},
		{name: "bad bind", section: "metrics: {bind: \"9100\"}\n", wantErr: []string{"metrics.bind", "not host:port"}},
		{name: "same as a listener", section: "metrics: {bind: \"127.0.0.1:1883\"}\n", wantErr: []string{"metrics.bind: \"127.0.0.1:1883\" takes the port of listeners[0]"}},
		{name: "wildcard over a listener", section: "metrics: {bind: \":1883\"}\n", wantErr: []string{"metrics.bind: \":1883\" takes the port of listeners[0] (\"127.0.0.1:1883\")"}},
		{name: "another address, same port", section: "metrics: {bind: \"127.0.0.2:1883\"}\n", want: Metrics{Bind: "127.0.0.2:1883"}},
		{name: "pprof without bind", section: "metrics: {pprof: true}\n", wantErr: []string{"metrics.pprof: needs metrics.bind"}},
		{name: "unknown key", section: "metrics: {port: 9100}\n", wantErr: []string{"port"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(minimal + tc.section))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if f.Metrics != tc.want {
					t.Errorf("metrics = %+v, want %+v", f.Metrics, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted %q", tc.section)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestTuningSection(t *testing.T) {
	for _, tc := range []struct {
		section string
		want    Tuning
		wantErr string // in the error; empty means valid
	}{
		{"", Tuning{}, ""},
		{"tuning: {relay: portable}\n", Tuning{Relay: RelayPortable}, ""},
		{"tuning: {relay: epoll}\n", Tuning{Relay: RelayEpoll}, map[bool]string{true: "", false: "tuning.relay: epoll is Linux-only"}[runtime.GOOS == "linux"]},
		{"tuning: {relay: splice}\n", Tuning{}, `tuning.relay: "splice" is not one of epoll, portable`},
		{"tuning: {engine: epoll}\n", Tuning{}, "tuning.engine: unknown key"},
	} {
		f, err := Parse([]byte(minimal + tc.section))
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: %v", tc.section, err)
		case tc.wantErr == "" && f.Tuning != tc.want:
			t.Errorf("%q: tuning = %+v, want %+v", tc.section, f.Tuning, tc.want)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%q: error %v, want one with %q", tc.section, err, tc.wantErr)
		}
	}
}
