package authn_test

import (
	"context"
	"fmt"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// The example token of EMQX's documentation, signed with the secret "secret".
const exampleToken = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkVNUVggQ2xvdWQiLCJpYXQiOjE1MTYyMzkwMjJ9.wGxZTwkCZtYPzkS854aQ9WCnP8YGIQ_erFh5RIznhYk"

func ExampleChain_Verify() {
	chain, err := authn.New([]configs.Authenticator{{
		Mechanism:    "jwt",
		Algorithm:    "hmac-based",
		Secret:       "secret",
		VerifyClaims: map[string]string{"sub": "${clientid}"},
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer chain.Close()

	for _, clientID := range []string{"1234567890", "someone-else"} {
		id, err := chain.Verify(context.Background(), authn.Request{
			ClientID:    clientID,
			Password:    []byte(exampleToken),
			HasPassword: true,
		})
		if err != nil {
			fmt.Printf("%s: refused: %s\n", clientID, authn.ReasonOf(err))
			continue
		}
		fmt.Printf("%s: accepted by %s, sub %s\n", clientID, id.Authenticator, id.Subject)
	}
	// Output:
	// 1234567890: accepted by jwt, sub 1234567890
	// someone-else: refused: claim_mismatch
}

func ExampleChain_Explain() {
	chain, err := authn.New([]configs.Authenticator{
		{Name: "password", Mechanism: "jwt", Algorithm: "hmac-based", Secret: "secret", OnMissingJWT: "ignore"},
		{Name: "username", Mechanism: "jwt", From: "username", Algorithm: "hmac-based", Secret: "secret"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer chain.Close()

	req := authn.Request{ClientID: "c1", Username: exampleToken, HasUsername: true}
	for _, step := range chain.Explain(context.Background(), req) {
		if step.Err != nil {
			fmt.Printf("%s: %s (%s)\n", step.Authenticator, step.Outcome, authn.ReasonOf(step.Err))
			continue
		}
		fmt.Printf("%s: %s\n", step.Authenticator, step.Outcome)
	}
	// Output:
	// password: pass (token_missing)
	// username: accept
}
