package packets

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	paho "github.com/eclipse/paho.golang/packets"
)

// countingReader counts the bytes read through it.
type countingReader struct {
	r     io.Reader
	n     int // bytes read
	reads int // calls to Read
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	c.reads++
	return n, err
}

// FuzzReadConnect checks, for any input: no panic; nothing read past the
// limit beyond the fixed header and version probe; every refusal an *Error
// wrapping exactly one sentinel with its code, in a version a CONNACK
// exists for (or 0), or an end of input; every accepted packet read
// exactly, its level and bridge bit as on the wire, re-encoded and re-read
// to an equal Connect, and for MQTT 5 decoded alike by paho. Paho speaks
// MQTT 5 only: 3.1, 3.1.1 and bridges rest on the round trip and on the
// fixtures, captured from real clients and bridges.
func FuzzReadConnect(f *testing.F) {
	for _, tc := range allCases() {
		f.Add(tc.raw)
		f.Add(tc.raw[:len(tc.raw)/2])
	}
	const limit = 1024
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &countingReader{r: bytes.NewReader(data)}
		c, err := ReadConnect(r, limit)
		checkNeeds(t, data, limit, c, err)
		var perr *Error
		switch {
		case err == nil:
			checkAccepted(t, c, data, r.n, limit)
		case errors.As(err, &perr):
			if r.n > limit && r.n > maxFixedHeaderSize+versionProbeSize {
				t.Errorf("read %d bytes for a refusal, limit %d", r.n, limit)
			}
			matched := 0
			for sentinel, code := range sentinels {
				if errors.Is(err, sentinel) {
					matched++
					if perr.Code != code {
						t.Errorf("%v with Code %v, want %v", err, perr.Code, code)
					}
				}
			}
			if matched != 1 {
				t.Errorf("%v wraps %d sentinels, want 1", err, matched)
			}
			if v := perr.Version; v != 0 && v != ProtocolV31 && v != ProtocolV311 && v != ProtocolV5 {
				t.Errorf("%v with Version 0x%02X, want 0 or a version this package speaks", err, v)
			}
		case !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
			t.Errorf("error %v from a bytes.Reader, want an end of input", err)
		}
	})
}

// checkNeeds checks ConnectNeeds and ParseConnect against ReadConnect,
// which read data with the outcome c, err: with fewer bytes than
// ConnectNeeds asks for ReadConnect cannot decide, and with that many it
// decides as with all of data, as ParseConnect does.
func checkNeeds(t *testing.T, data []byte, limit int, c *Connect, err error) {
	t.Helper()
	n := ConnectNeeds(data, limit)
	undecided := func(err error) bool { return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) }
	if n > len(data) {
		if !undecided(err) {
			t.Fatalf("ConnectNeeds says %d bytes of %d, yet ReadConnect decided: %v", n, len(data), err)
		}
		return
	}
	if n > 0 {
		if _, err := ReadConnect(bytes.NewReader(data[:n-1]), limit); !undecided(err) {
			t.Fatalf("ConnectNeeds says %d bytes, yet ReadConnect decided on %d: %v", n, n-1, err)
		}
		if again := ConnectNeeds(data[:n-1], limit); again < n {
			t.Fatalf("ConnectNeeds says %d bytes of all of them, %d of the first %d", n, again, n-1)
		}
	}
	for _, b := range [][]byte{data[:n], data} {
		parsed, perr := ParseConnect(b, limit)
		switch {
		case (perr == nil) != (err == nil):
			t.Fatalf("ParseConnect of %d bytes: %v; ReadConnect: %v", len(b), perr, err)
		case err != nil && perr.Error() != err.Error():
			t.Fatalf("ParseConnect of %d bytes refuses with %q, ReadConnect with %q", len(b), perr, err)
		case err == nil && (!equalConnect(parsed, c) || !bytes.Equal(parsed.Raw, c.Raw) || cap(parsed.Raw) != len(c.Raw)):
			t.Fatalf("ParseConnect of %d bytes read\n%s\nReadConnect\n%s", len(b), describe(parsed), describe(c))
		}
	}
}

func checkAccepted(t *testing.T, c *Connect, data []byte, read, limit int) {
	t.Helper()
	if read != len(c.Raw) || len(c.Raw) > limit || !bytes.Equal(c.Raw, data[:read]) {
		t.Fatalf("read %d bytes, Raw is %d bytes, limit %d", read, len(c.Raw), limit)
	}
	// The protocol level is the version, with bit 7 exactly for a bridge.
	level := data[headerLen(data)+2+len(c.ProtocolName)]
	if level&^0x80 != c.ProtocolVersion || c.Bridge != (level&0x80 != 0) || c.Bridge && c.ProtocolVersion == ProtocolV5 {
		t.Fatalf("level 0x%02X read as version %d, bridge %t", level, c.ProtocolVersion, c.Bridge)
	}
	raw, err := c.Encode()
	if err != nil {
		t.Fatalf("Encode of an accepted packet: %v\n%s", err, describe(c))
	}
	again, err := ReadConnect(bytes.NewReader(raw), 0)
	if err != nil {
		t.Fatalf("ReadConnect(Encode()): %v", err)
	}
	if !equalConnect(again, c) {
		t.Fatalf("round trip changed the packet:\n%s\nwant\n%s", describe(again), describe(c))
	}
	if c.ProtocolVersion == ProtocolV5 {
		theirs, err := pahoDecode(c.Raw, headerLen(c.Raw))
		if err != nil {
			t.Fatalf("paho refuses what ReadConnect accepts: %v", err)
		}
		if ours := toPaho(c); !reflect.DeepEqual(ours, theirs) {
			t.Fatalf("ours\n%v\npaho's\n%v", ours, theirs)
		}
	}
}

// FuzzConnectV5RoundTrip encodes an MQTT 5 CONNECT with paho's encoder and
// reads it back: ReadConnect must accept it exactly when it keeps the rules
// paho does not check, and then agree with paho's own decoder.
func FuzzConnectV5RoundTrip(f *testing.F) {
	f.Add("sensor-5", "alice", []byte(tokenSecret), uint16(60), uint32(3600), uint16(20), "k", "v", "dead/5", []byte("bye"), byte(0x07))
	f.Add("", "", []byte{}, uint16(0), uint32(0), uint16(0), "", "", "", []byte{}, byte(0))
	f.Add("\x00", "\xff", []byte(nil), uint16(1), uint32(1), uint16(1), "é", "\xed\xa0\x80", "t", []byte(nil), byte(0x1f))
	f.Fuzz(func(t *testing.T, clientID, username string, password []byte, keepAlive uint16,
		sessionExpiry uint32, receiveMaximum uint16, userKey, userValue, willTopic string, willPayload []byte, flags byte) {
		for _, field := range [][]byte{[]byte(clientID), []byte(username), password, []byte(userKey), []byte(userValue), []byte(willTopic), willPayload} {
			if len(field) > 1024 {
				t.Skip("long fields only test paho's truncation")
			}
		}
		in := &paho.Connect{
			ProtocolName: "MQTT", ProtocolVersion: ProtocolV5, KeepAlive: keepAlive,
			ClientID: clientID, CleanStart: flags&1 != 0,
			UsernameFlag: flags&2 != 0, Username: username,
			PasswordFlag: flags&4 != 0, Password: password,
			WillFlag: flags&8 != 0, WillQOS: flags >> 4 & 3, WillRetain: flags&0x40 != 0,
			WillTopic: willTopic, WillMessage: willPayload,
			Properties: &paho.Properties{
				SessionExpiryInterval: &sessionExpiry, ReceiveMaximum: &receiveMaximum,
				User: []paho.User{{Key: userKey, Value: userValue}},
			},
			// Paho writes only the will delay of the will properties.
			WillProperties: &paho.Properties{WillDelayInterval: &sessionExpiry},
		}
		var buf bytes.Buffer
		if _, err := in.WriteTo(&buf); err != nil {
			t.Fatalf("paho WriteTo: %v", err)
		}
		raw := buf.Bytes()

		// The strings paho writes, which ReadConnect checks and paho does not.
		strs := []string{clientID, userKey, userValue}
		if in.UsernameFlag {
			strs = append(strs, username)
		}
		if in.WillFlag {
			strs = append(strs, willTopic)
		}
		valid := receiveMaximum != 0 && !(in.WillFlag && in.WillQOS == 3)
		for _, s := range strs {
			valid = valid && utf8.ValidString(s) && !strings.Contains(s, "\x00")
		}
		c, err := ReadConnect(bytes.NewReader(raw), 1<<20)
		if !valid {
			checkRefusalOf(t, err)
			return
		}
		if err != nil {
			t.Fatalf("ReadConnect of paho's CONNECT: %v", err)
		}
		theirs, err := pahoDecode(raw, headerLen(raw))
		if err != nil {
			t.Fatalf("paho Unpack of its own CONNECT: %v", err)
		}
		if ours := toPaho(c); !reflect.DeepEqual(ours, theirs) {
			t.Fatalf("ours\n%v\npaho's\n%v", ours, theirs)
		}
	})
}

// checkRefusalOf checks that err refuses an MQTT 5 CONNECT in a way the
// client can be told about.
func checkRefusalOf(t *testing.T, err error) {
	t.Helper()
	var perr *Error
	if !errors.As(err, &perr) || perr.Version != ProtocolV5 {
		t.Fatalf("error %v, want an *Error for MQTT 5", err)
	}
	if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrProtocolViolation) {
		t.Fatalf("error %v, want malformed or protocol violation", err)
	}
}
