package packets_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

func ExampleReadConnect() {
	// A client's MQTT 3.1.1 CONNECT with user name "alice" and password
	// "secret", then a PINGREQ it sent without waiting.
	packet, _ := hex.DecodeString("102000044d51545404c2003c00056465762d310005616c6963650006736563726574" + "c000")
	client := bytes.NewReader(packet)

	pk, err := packets.ReadConnect(client, 0)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("client %q, user %q, password %q\n", pk.ClientID, pk.Username, pk.Password)
	fmt.Printf("%d bytes to forward, %d left in the reader\n", len(pk.Raw), client.Len())
	// Output:
	// client "dev-1", user "alice", password "secret"
	// 34 bytes to forward, 2 left in the reader
}

func ExampleReadConnect_refused() {
	// An MQTT 5 CONNECT whose will QoS is 3.
	packet, _ := hex.DecodeString("101300044d515454051e003c000000000001740000")

	_, err := packets.ReadConnect(bytes.NewReader(packet), 0)
	var perr *packets.Error
	if errors.As(err, &perr) {
		var answer bytes.Buffer
		packets.WriteConnack(&answer, perr.Version, perr.Code)
		fmt.Println(err)
		fmt.Printf("answer % x\n", answer.Bytes())
	}
	// Output:
	// packets: malformed packet: will QoS 3 [MQTT-3.1.2-14]
	// answer 20 03 00 81 00
}
