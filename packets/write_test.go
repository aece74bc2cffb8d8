package packets

import (
	"bytes"
	"errors"
	"io"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"
)

// failingWriter fails every write.
type failingWriter struct{}

var errBrokenPipe = errors.New("broken pipe")

func (failingWriter) Write([]byte) (int, error) { return 0, errBrokenPipe }

func TestWriteConnack(t *testing.T) {
	tests := []struct {
		name    string
		version byte
		code    ReasonCode
		want    []byte // nil when an error is expected
	}{
		{"mqttv31 accepted", ProtocolV31, Success, []byte{0x20, 0x02, 0x00, 0x00}},
		{"mqttv31 bad user name or password", ProtocolV31, BadUserNameOrPassword, []byte{0x20, 0x02, 0x00, 0x04}},
		{"mqttv311 not authorized", ProtocolV311, NotAuthorized, []byte{0x20, 0x02, 0x00, 0x05}},
		{"mqttv311 server unavailable", ProtocolV311, ServerUnavailable, []byte{0x20, 0x02, 0x00, 0x03}},
		{"mqttv311 unsupported version", ProtocolV311, UnsupportedProtocolVersion, []byte{0x20, 0x02, 0x00, 0x01}},
		{"level 6 gets the 3.1.1 form", 6, UnsupportedProtocolVersion, []byte{0x20, 0x02, 0x00, 0x01}},
		{"mqttv5 accepted", ProtocolV5, Success, []byte{0x20, 0x03, 0x00, 0x00, 0x00}},
		{"mqttv5 bad user name or password", ProtocolV5, BadUserNameOrPassword, []byte{0x20, 0x03, 0x00, 0x86, 0x00}},
		{"mqttv5 packet too large", ProtocolV5, PacketTooLarge, []byte{0x20, 0x03, 0x00, 0x95, 0x00}},
		{"mqttv5 malformed packet", ProtocolV5, MalformedPacket, []byte{0x20, 0x03, 0x00, 0x81, 0x00}},
		{"mqttv311 packet too large has no code", ProtocolV311, PacketTooLarge, nil},
		{"mqttv31 malformed packet has no code", ProtocolV31, MalformedPacket, nil},
		{"version unknown", 0, BadUserNameOrPassword, nil},
		{"mqttv5 0x04 is no CONNACK code", ProtocolV5, ReasonCode(0x04), nil},
		{"mqttv5 0x8B is no CONNACK code", ProtocolV5, ServerShuttingDown, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteConnack(&buf, tc.version, tc.code)
			if tc.want == nil {
				if err == nil {
					t.Errorf("no error, want one")
				}
				if buf.Len() != 0 {
					t.Errorf("wrote % x along with the error", buf.Bytes())
				}
				return
			}
			if err != nil {
				t.Fatalf("WriteConnack: %v", err)
			}
			if !bytes.Equal(buf.Bytes(), tc.want) {
				t.Errorf("wrote % x, want % x", buf.Bytes(), tc.want)
			}
		})
	}
}

// TestWriteConnackPahoReads checks the MQTT 5 CONNACK with paho's reader.
func TestWriteConnackPahoReads(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteConnack(&buf, ProtocolV5, NotAuthorized); err != nil {
		t.Fatalf("WriteConnack: %v", err)
	}
	packet, err := paho.ReadPacket(&buf)
	if err != nil {
		t.Fatalf("paho ReadPacket: %v", err)
	}
	connack, ok := packet.Content.(*paho.Connack)
	if !ok || connack.ReasonCode != byte(NotAuthorized) || connack.SessionPresent {
		t.Errorf("paho read %v", packet)
	}
}

func TestWriteDisconnect(t *testing.T) {
	tests := []struct {
		name    string
		version byte
		code    ReasonCode
		want    []byte
		wantErr bool
	}{
		{"mqttv5 not authorized", ProtocolV5, NotAuthorized, []byte{0xE0, 0x02, 0x87, 0x00}, false},
		{"mqttv5 server shutting down", ProtocolV5, ServerShuttingDown, []byte{0xE0, 0x02, 0x8B, 0x00}, false},
		{"mqttv5 maximum connect time", ProtocolV5, MaximumConnectTime, []byte{0xE0, 0x02, 0xA0, 0x00}, false},
		// A remaining length of 0 is normal disconnection (5.0 §3.14.2.1).
		{"mqttv5 normal", ProtocolV5, Success, []byte{0xE0, 0x00}, false},
		{"mqttv5 0x04 is a client's code", ProtocolV5, DisconnectWithWill, nil, true},
		{"mqttv5 0x86 is no DISCONNECT code", ProtocolV5, BadUserNameOrPassword, nil, true},
		{"mqttv311 writes nothing", ProtocolV311, NotAuthorized, nil, false},
		{"mqttv31 writes nothing", ProtocolV31, ServerShuttingDown, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteDisconnect(&buf, tc.version, tc.code)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %t", err, tc.wantErr)
			}
			if !bytes.Equal(buf.Bytes(), tc.want) {
				t.Errorf("wrote % x, want % x", buf.Bytes(), tc.want)
			}
		})
	}

	t.Run("paho reads it", func(t *testing.T) {
		var buf bytes.Buffer
		if err := WriteDisconnect(&buf, ProtocolV5, NotAuthorized); err != nil {
			t.Fatalf("WriteDisconnect: %v", err)
		}
		packet, err := paho.ReadPacket(&buf)
		if err != nil {
			t.Fatalf("paho ReadPacket: %v", err)
		}
		if d, ok := packet.Content.(*paho.Disconnect); !ok || d.ReasonCode != byte(NotAuthorized) {
			t.Errorf("paho read %v", packet)
		}
	})
}

func TestWriteErrors(t *testing.T) {
	writes := map[string]func(io.Writer) error{
		"CONNACK v3":    func(w io.Writer) error { return WriteConnack(w, ProtocolV311, NotAuthorized) },
		"CONNACK v5":    func(w io.Writer) error { return WriteConnack(w, ProtocolV5, NotAuthorized) },
		"DISCONNECT v5": func(w io.Writer) error { return WriteDisconnect(w, ProtocolV5, NotAuthorized) },
	}
	for name, write := range writes {
		t.Run(name, func(t *testing.T) {
			if err := write(failingWriter{}); !errors.Is(err, errBrokenPipe) {
				t.Errorf("error %v, want it to wrap %v", err, errBrokenPipe)
			}
		})
	}
}

func TestReasonCode(t *testing.T) {
	tests := []struct {
		code   ReasonCode
		name   string
		v3     byte
		v3Okay bool
	}{
		{Success, "success", 0, true},
		{UnspecifiedError, "unspecified error", 3, true},
		{MalformedPacket, "malformed packet", 0, false},
		{ProtocolError, "protocol error", 0, false},
		{UnsupportedProtocolVersion, "unsupported protocol version", 1, true},
		{ClientIdentifierNotValid, "client identifier not valid", 2, true},
		{BadUserNameOrPassword, "bad user name or password", 4, true},
		{NotAuthorized, "not authorized", 5, true},
		{ServerUnavailable, "server unavailable", 3, true},
		{ServerBusy, "server busy", 3, true},
		{Banned, "banned", 5, true},
		{ServerShuttingDown, "server shutting down", 3, true},
		{PacketTooLarge, "packet too large", 0, false},
		{QuotaExceeded, "quota exceeded", 3, true},
		{ConnectionRateExceeded, "connection rate exceeded", 3, true},
		{ReasonCode(0x03), "reason code 0x03", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.code.String(); got != tc.name {
				t.Errorf("String() = %q, want %q", got, tc.name)
			}
			if v3, ok := tc.code.V3ReturnCode(); v3 != tc.v3 || ok != tc.v3Okay {
				t.Errorf("V3ReturnCode() = %d, %t; want %d, %t", v3, ok, tc.v3, tc.v3Okay)
			}
		})
	}
}

func TestError(t *testing.T) {
	for sentinel, code := range sentinels {
		t.Run(sentinel.Error(), func(t *testing.T) {
			cause := errors.Join(sentinel, errors.New("detail"))
			err := error(newError(ProtocolV5, cause))
			if !errors.Is(err, sentinel) {
				t.Errorf("errors.Is(%v, %v) is false", err, sentinel)
			}
			var perr *Error
			if !errors.As(err, &perr) || perr.Code != code || perr.Version != ProtocolV5 {
				t.Errorf("got %+v, want Code %v, Version 5", perr, code)
			}
			if err.Error() != cause.Error() {
				t.Errorf("Error() = %q, want the cause's %q", err.Error(), cause.Error())
			}
		})
	}
	t.Run("no cause", func(t *testing.T) {
		if got := (&Error{Code: NotAuthorized}).Error(); got != "packets: CONNECT refused: not authorized" {
			t.Errorf("Error() = %q", got)
		}
	})
}
