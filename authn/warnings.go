package authn

import (
	"time"

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
		configured, effective := time.Duration(cfg.RefreshInterval), jwksRefreshInterval(cfg)
		if cfg.UseJWKS && configured != 0 && configured != effective {
			warn("refresh_interval is under the minimum, which is used instead",
				zap.Stringer("configured", configured), zap.Stringer("effective", effective))
		}
	}
	return warnings
}
