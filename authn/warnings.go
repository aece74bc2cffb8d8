package authn

import (
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"go.uber.org/zap"

	"github.com/mqtt-jwt-proxy/mqtt-jwt-proxy/configs"
)

// Warning is an authenticator setting that works, but is unsafe or is not
// applied as written. The proxy logs each at start and at every reload,
// and the check command prints them, from Warnings.
type Warning struct {
	// Authenticator names the authenticator.
	Authenticator string
	// Message says what is wrong; it is the same for every authenticator,
	// so that logs can be searched for it.
	Message string
	// Fields are the values involved, as log fields.
	Fields []zap.Field
}

// Warnings lists what auths, as New would build them, do that their
// operator should know of, in the order of auths.
func Warnings(auths []configs.Authenticator) []Warning {
	var warnings []Warning
	for i, cfg := range auths {
		name := cfg.Name
		if name == "" {
			name = cfg.DefaultName(i)
		}
		warn := func(message string, fields ...zap.Field) {
			warnings = append(warnings, Warning{Authenticator: name, Message: message, Fields: fields})
		}
		if cfg.UsesExampleSecret() {
			warn("authenticator uses a secret published in documentation; anyone can mint tokens for it")
		}
		if short, n := shortFor(cfg); len(short) > 0 {
			warn("HMAC secret is shorter than the hash output of algorithms it verifies (RFC 7518 section 3.2: 32 bytes for HS256, 48 for HS384, 64 for HS512)",
				zap.Int("secret_bytes", n), zap.Stringers("short_for", short))
		}
		configured, effective := time.Duration(cfg.RefreshInterval), jwksRefreshInterval(cfg)
		if cfg.UseJWKS && configured != 0 && configured != effective {
			warn("refresh_interval is under the minimum, which is used instead",
				zap.Stringer("configured", configured), zap.Stringer("effective", effective))
		}
	}
	return warnings
}

// shortFor returns the HMAC algorithms that cfg's secret, of n bytes, is
// too short for: RFC 7518 section 3.2 requires a key at least as long as
// the hash output. A secret New would refuse is New's to report.
func shortFor(cfg configs.Authenticator) (algs []jwa.SignatureAlgorithm, n int) {
	if cfg.UseJWKS || cfg.Algorithm != "hmac-based" {
		return nil, 0
	}
	secret, err := hmacSecret(cfg)
	if err != nil {
		return nil, 0
	}
	for _, alg := range hmacAlgorithms {
		if len(secret) < hashFor(alg).Size() {
			algs = append(algs, alg)
		}
	}
	return algs, len(secret)
}
