package embedded

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// records is a slog.Handler that passes every record to a channel.
type records chan slog.Record

func (r records) Enabled(context.Context, slog.Level) bool        { return true }
func (r records) Handle(_ context.Context, rec slog.Record) error { r <- rec.Clone(); return nil }
func (r records) WithAttrs([]slog.Attr) slog.Handler              { return r }
func (r records) WithGroup(string) slog.Handler                   { return r }

// connect311 is an MQTT 3.1.1 CONNECT with clean session and client ID "c".
var connect311 = []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 'c'}

// TestClientEndings checks what the broker logs when a connection ends:
// a client that goes away without DISCONNECT is ordinary (debug), a
// client that breaks the protocol is a warning that says so. mochi's own
// listener logged both as a warning with an empty message.
func TestClientEndings(t *testing.T) {
	cases := []struct {
		name  string
		after []byte // sent after the CONNACK, before closing
		level slog.Level
		msg   string
	}{
		{"closed without DISCONNECT", nil, slog.LevelDebug, "client connection ended"},
		{"DISCONNECT", []byte{0xe0, 0}, slog.LevelDebug, "client connection ended"},
		{"reserved packet type", []byte{0x00, 0}, slog.LevelWarn, "client connection failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logged := make(records, 64)
			b, err := Start(slog.New(logged))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			c, err := net.Dial("tcp", b.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(connect311); err != nil {
				t.Fatal(err)
			}
			connack := make([]byte, 4)
			if _, err := io.ReadFull(c, connack); err != nil {
				t.Fatalf("read CONNACK: %v", err)
			}
			if connack[0] != 0x20 || connack[3] != 0 {
				t.Fatalf("CONNACK %x, want an accepting one", connack)
			}
			if tc.after != nil {
				if _, err := c.Write(tc.after); err != nil {
					t.Fatal(err)
				}
			}
			c.Close()

			timeout := time.After(10 * time.Second)
			for {
				select {
				case rec := <-logged:
					if rec.Message == "" {
						t.Errorf("a %v record without a message", rec.Level)
					}
					if rec.Message != "client connection ended" && rec.Message != "client connection failed" {
						continue
					}
					if rec.Message != tc.msg || rec.Level != tc.level {
						t.Fatalf("logged %v %q, want %v %q", rec.Level, rec.Message, tc.level, tc.msg)
					}
					return
				case <-timeout:
					t.Fatal("the broker logged nothing about the connection's end")
				}
			}
		})
	}
}
