package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"math"

	paho "github.com/eclipse/paho.golang/packets"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/authn"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/packets"
)

// Forward rewrites the CONNECT of an accepted client before it goes
// upstream, as the forward section of the configuration says: the
// password kept, stripped or replaced by a literal, the user name and the
// client identifier kept or rendered from templates such as
// "${claims.sub}". A nil *Forward keeps everything, and so does a Forward
// whose rewrite gives the client's own values: the client's bytes then go
// upstream unchanged. Whatever the configuration, the CONNECT of a client
// that presented its token under an Authentication Method goes without
// its Authentication Method and Data: the proxy answers for the method,
// which the broker does not know [MQTT-4.12.0-1]. Build one with
// NewForward.
type Forward struct {
	stripPassword bool
	password      []byte          // sent instead of the client's; nil keeps it
	username      *authn.Template // rendered as the user name; nil keeps it
	clientID      *authn.Template // rendered as the client identifier; nil keeps it
}

// NewForward builds the rewrite cfg describes, parsing its templates. It
// returns nil, and no error, when cfg keeps everything. Errors name the
// key, such as "forward.username: unknown placeholder ${foo}; ...".
func NewForward(cfg configs.Forward) (*Forward, error) {
	f := &Forward{}
	var errs []error
	switch cfg.Password {
	case "", configs.ForwardKeep:
	case configs.ForwardStrip:
		f.stripPassword = true
	default:
		if len(cfg.Password) > math.MaxUint16 {
			errs = append(errs, fmt.Errorf("forward.password: %d bytes, more than the %d a CONNECT field holds", len(cfg.Password), math.MaxUint16))
		}
		f.password = []byte(cfg.Password)
	}
	for _, field := range []struct {
		key, value string
		template   **authn.Template
	}{
		{"forward.username", cfg.Username, &f.username},
		{"forward.client_id", cfg.ClientID, &f.clientID},
	} {
		if field.value == "" || field.value == configs.ForwardKeep {
			continue
		}
		t, err := authn.ParseTemplate(field.value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field.key, err))
			continue
		}
		*field.template = &t
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if !f.stripPassword && f.password == nil && f.username == nil && f.clientID == nil {
		return nil, nil
	}
	return f, nil
}

// connect returns the CONNECT to send upstream for pk, whose client req
// was accepted as id, and the client ID in it: pk.Raw when nothing
// changes, else pk re-encoded with the rewritten fields. A template
// without a value for this client, or a result the CONNECT cannot carry (a
// claim holding U+0000, say), is an error wrapping
// authn.ErrClaimMismatch. It logs at debug what it rewrote, never the
// password.
//
// maxPacket, when not 0, is the largest packet the proxy takes from the
// broker for this client (a framed session's limits.max_packet_size): an
// MQTT 5 CONNECT gets it as its Maximum Packet Size where the client asked
// for none or a larger one, so that the broker drops a larger message for
// this client rather than send it [MQTT-3.1.2-25], which would end the
// session.
func (f *Forward) connect(pk *packets.Connect, req *authn.Request, id *authn.Identity, maxPacket int, log *connLog) (raw []byte, clientID string, err error) {
	capPacket := maxPacket > 0 && pk.ProtocolVersion == packets.ProtocolV5 &&
		(pk.Properties == nil || pk.Properties.MaximumPacketSize == nil || int64(*pk.Properties.MaximumPacketSize) > int64(maxPacket))
	if f == nil && id.AuthMethod == "" && !capPacket {
		return pk.Raw, pk.ClientID, nil
	}
	out := *pk
	if f != nil {
		if err := f.rewrite(&out, req, id.Claims); err != nil {
			return nil, "", err
		}
	}
	if id.AuthMethod != "" || capPacket {
		var props paho.Properties
		if pk.Properties != nil {
			props = *pk.Properties
		}
		if id.AuthMethod != "" {
			props.AuthMethod, props.AuthData = "", nil
		}
		if capPacket {
			size := uint32(maxPacket)
			props.MaximumPacketSize = &size
		}
		out.Properties = &props
	}
	if out.PasswordFlag && !out.UsernameFlag && out.ProtocolVersion != packets.ProtocolV5 {
		// MQTT 3.1 and 3.1.1 carry a password only behind a user name
		// [MQTT-3.1.2-22]: an empty one keeps the packet valid.
		out.UsernameFlag, out.Username = true, ""
	}

	var rewritten []string
	var fields []zap.Field
	if out.ClientID != pk.ClientID {
		rewritten = append(rewritten, "client_id")
		fields = append(fields, zap.String("upstream_client_id", out.ClientID))
	}
	if out.UsernameFlag != pk.UsernameFlag || out.Username != pk.Username {
		rewritten = append(rewritten, "username")
		fields = append(fields, zap.String("upstream_username", loggedUsername(out.Username)))
	}
	if out.PasswordFlag != pk.PasswordFlag || !bytes.Equal(out.Password, pk.Password) {
		rewritten = append(rewritten, "password")
	}
	if id.AuthMethod != "" {
		rewritten = append(rewritten, "authentication")
	}
	if capPacket {
		rewritten = append(rewritten, "maximum_packet_size")
	}
	if len(rewritten) == 0 {
		return pk.Raw, pk.ClientID, nil
	}
	if raw, err = out.Encode(); err != nil {
		return nil, "", fmt.Errorf("%w: rewriting %v: %w", authn.ErrClaimMismatch, rewritten, err)
	}
	log.Debug("connect rewritten for the upstream", append(fields, zap.Strings("rewritten", rewritten))...)
	return raw, out.ClientID, nil
}

// rewrite sets the fields of out that f rewrites, for the client req
// accepted with claims.
func (f *Forward) rewrite(out *packets.Connect, req *authn.Request, claims map[string]any) error {
	var err error
	if f.clientID != nil {
		if out.ClientID, err = render(f.clientID, "forward.client_id", req, claims); err != nil {
			return err
		}
	}
	if f.username != nil {
		if out.Username, err = render(f.username, "forward.username", req, claims); err != nil {
			return err
		}
		out.UsernameFlag = true
	}
	switch {
	case f.stripPassword:
		out.PasswordFlag, out.Password = false, nil
	case f.password != nil:
		out.PasswordFlag, out.Password = true, f.password
	}
	return nil
}

// render is t for this client, or an error wrapping
// authn.ErrClaimMismatch that names key.
func render(t *authn.Template, key string, req *authn.Request, claims map[string]any) (string, error) {
	s, ok := t.Render(req, claims)
	if !ok {
		return "", fmt.Errorf("%w: %s: %s has no value for this client", authn.ErrClaimMismatch, key, t)
	}
	return s, nil
}
