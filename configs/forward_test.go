package configs

import (
	"strings"
	"testing"
)

func TestParseForward(t *testing.T) {
	cases := []struct {
		name    string
		yaml    string
		want    Forward
		wantErr string
	}{
		{"absent keeps everything", minimal, Forward{}, ""},
		{"every field", minimal + "forward:\n  password: strip\n  username: \"${claims.tenant}\"\n  client_id: \"${claims.sub}\"\n",
			Forward{Password: ForwardStrip, Username: "${claims.tenant}", ClientID: "${claims.sub}"}, ""},
		{"literal password", minimal + "forward: {password: broker-pass}\n", Forward{Password: "broker-pass"}, ""},
		{"unknown key", minimal + "forward: {clientid: x}\n", Forward{}, "forward.clientid: unknown key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse([]byte(tc.yaml))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Forward != tc.want {
				t.Errorf("forward = %+v, want %+v", f.Forward, tc.want)
			}
		})
	}
}
