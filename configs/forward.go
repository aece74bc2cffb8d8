package configs

// The values of Forward's fields that are not a literal or a template.
const (
	// ForwardKeep sends the client's own value upstream.
	ForwardKeep = "keep"
	// ForwardStrip leaves the password out of the upstream CONNECT.
	ForwardStrip = "strip"
)

// Forward says what the broker sees of an accepted client's identity: the
// CONNECT is forwarded unchanged unless a field here says otherwise. Empty
// fields mean ForwardKeep.
//
// Templates may use ${claims.NAME} (a top-level claim of the verified
// token: a string, number or boolean), ${clientid}, ${username},
// ${cert_common_name} and ${cert_subject}. A client for which a template
// renders a placeholder absent or empty is refused with claim_mismatch.
// Templates are parsed when the proxy starts and by the check command,
// whose errors name the key, such as forward.client_id.
type Forward struct {
	// Password is "keep" (the default: the client's password, the token
	// included, goes upstream), "strip" (no password goes upstream, so a
	// broker that logs credentials never sees the token), or any other
	// text, which is sent as every client's password.
	Password string `yaml:"password"`
	// Username is "keep" (the default) or a template whose result is sent
	// as the user name.
	Username string `yaml:"username"`
	// ClientID is "keep" (the default) or a template whose result is sent
	// as the client identifier, such as "${claims.sub}".
	ClientID string `yaml:"client_id"`
}
