package packets_test

import (
	"encoding/hex"
	"fmt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

func ExampleFramer() {
	// Two reads from an MQTT 3.1.1 client: a PINGREQ and the first bytes
	// of a PUBLISH to "a/b", then the rest of the PUBLISH and a
	// DISCONNECT.
	first, _ := hex.DecodeString("c000" + "3007" + "0003612f")
	second, _ := hex.DecodeString("62" + "6869" + "e000")

	f := packets.NewFramer(packets.ProtocolV311, 1024)
	defer f.Release()
	for _, read := range [][]byte{first, second} {
		f.Feed(read)
		for {
			frame, ok, err := f.Next()
			if err != nil {
				fmt.Println(err)
				return
			}
			if !ok {
				fmt.Printf("needs more, holds %d bytes\n", f.Buffered())
				break
			}
			fmt.Printf("%v of %d bytes at offset %d\n", frame.Type, len(frame.Raw), frame.Offset)
			if frame.Type == packets.TypePublish {
				var p packets.Publish
				if err := p.Decode(packets.ProtocolV311, frame); err == nil {
					fmt.Printf("  topic %q, payload %q\n", p.Topic, p.Payload)
				}
			}
		}
	}
	// Output:
	// PINGREQ of 2 bytes at offset 0
	// needs more, holds 6 bytes
	// PUBLISH of 9 bytes at offset -1
	//   topic "a/b", payload "hi"
	// DISCONNECT of 2 bytes at offset 3
	// needs more, holds 0 bytes
}

func ExampleSuback_AppendExpanded() {
	// The client subscribed to three filters; the proxy refused the second
	// and forwarded the others, and the broker granted QoS 1 and 0.
	fromBroker, _ := hex.DecodeString("9005" + "000a" + "00" + "0100")
	f := packets.NewFramer(packets.ProtocolV5, 0)
	f.Feed(fromBroker)
	frame, _, _ := f.Next()
	var suback packets.Suback
	if err := suback.Decode(packets.ProtocolV5, frame); err != nil {
		fmt.Println(err)
		return
	}
	refused := []packets.Insertion{{Index: 1, Code: packets.SubscriptionRefusal(packets.ProtocolV5)}}
	toClient, err := suback.AppendExpanded(nil, packets.ProtocolV5, refused)
	fmt.Printf("% x, %v\n", toClient, err)
	// Output:
	// 90 06 00 0a 00 01 87 00, <nil>
}
