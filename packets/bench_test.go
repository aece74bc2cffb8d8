package packets

import (
	"bytes"
	"testing"

	paho "github.com/eclipse/paho.golang/packets"
)

// BenchmarkReadConnect reads a typical authenticating CONNECT: a client id,
// a user name and a 211-byte JWT as the password.
func BenchmarkReadConnect(b *testing.B) {
	versions := []struct {
		name    string
		connect *Connect
	}{
		{"mqttv311", &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV311}},
		{"mqttv5", &Connect{ProtocolName: "MQTT", ProtocolVersion: ProtocolV5,
			Properties: &paho.Properties{SessionExpiryInterval: ptr[uint32](3600), ReceiveMaximum: ptr[uint16](20)}}},
	}
	for _, v := range versions {
		c := v.connect
		c.CleanStart, c.KeepAlive, c.ClientID = true, 60, "sensor-0042"
		c.UsernameFlag, c.Username = true, "alice"
		c.PasswordFlag, c.Password = true, []byte(tokenEMQXSecret)
		raw, err := c.Encode()
		if err != nil {
			b.Fatal(err)
		}
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			r := bytes.NewReader(raw)
			for b.Loop() {
				r.Reset(raw)
				if _, err := ReadConnect(r, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
