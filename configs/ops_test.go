package configs

import (
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
