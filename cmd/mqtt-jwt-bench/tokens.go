package main

import (
	"bytes"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

// tokenOptions are the flags that say where tokens come from. The zero
// value gives no token: clients connect without a password.
type tokenOptions struct {
	// File holds one token a line; when set, nothing is minted.
	File string
	// Alg, with Secret (HS*) or KeyFile (a PEM private key), mints tokens.
	Alg     string
	Secret  string
	KeyFile string
	// TTL is each minted token's lifetime (exp); zero means no exp.
	TTL time.Duration
	// Pool is how many tokens are minted before the run and then used in
	// turn; 0 mints one per connection during the run, which costs the
	// load tool a signature each (about a millisecond for RS256).
	Pool int
	// Invalid breaks each token's signature, for the refusal path.
	Invalid bool
}

// tokenSource hands out tokens to concurrent workers.
type tokenSource struct {
	pool    [][]byte
	next    atomic.Uint64
	mint    func() ([]byte, error) // nil when every token is in pool
	invalid bool
}

// newTokenSource reads or mints the tokens o describes; it returns nil
// when o asks for none.
func newTokenSource(o tokenOptions) (*tokenSource, error) {
	s := &tokenSource{invalid: o.Invalid}
	switch {
	// -alg alone mints nothing (it has a default), so only a secret or a
	// key conflicts with a file.
	case o.File != "" && (o.Secret != "" || o.KeyFile != ""):
		return nil, fmt.Errorf("-tokens reads tokens from a file; it does not go with -secret or -key")
	case o.File != "":
		data, err := os.ReadFile(o.File)
		if err != nil {
			return nil, fmt.Errorf("-tokens: %w", err)
		}
		for _, line := range bytes.Split(data, []byte("\n")) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				s.pool = append(s.pool, s.finish(line))
			}
		}
		if len(s.pool) == 0 {
			return nil, fmt.Errorf("-tokens %s: no token in the file", o.File)
		}
		return s, nil
	case o.Secret == "" && o.KeyFile == "":
		if o.Invalid {
			return nil, fmt.Errorf("-invalid needs tokens: -tokens FILE, or -secret or -key to mint them")
		}
		return nil, nil
	}
	mint, err := newMinter(o)
	if err != nil {
		return nil, err
	}
	s.mint = func() ([]byte, error) {
		token, err := mint()
		if err != nil {
			return nil, err
		}
		return s.finish(token), nil
	}
	for range o.Pool {
		token, err := s.mint()
		if err != nil {
			return nil, err
		}
		s.pool = append(s.pool, token)
	}
	if len(s.pool) > 0 {
		s.mint = nil
	}
	return s, nil
}

// finish breaks token's signature when the source hands out invalid
// tokens. It changes the signature's first character, which always
// changes the decoded bytes (the last may only carry padding bits), so the
// token still parses and is refused for its signature.
func (s *tokenSource) finish(token []byte) []byte {
	if !s.invalid {
		return token
	}
	i := bytes.LastIndexByte(token, '.') + 1
	if i == 0 || i == len(token) {
		return token // not a JWS: already invalid
	}
	broken := bytes.Clone(token)
	if broken[i] == 'A' {
		broken[i] = 'B'
	} else {
		broken[i] = 'A'
	}
	return broken
}

// token returns the next token: from the pool in turn, or newly minted.
// A nil source gives none.
func (s *tokenSource) token() ([]byte, error) {
	if s == nil {
		return nil, nil
	}
	if s.mint != nil {
		return s.mint()
	}
	return s.pool[(s.next.Add(1)-1)%uint64(len(s.pool))], nil
}

// newMinter returns a function signing a fresh token (sub "bench", iat
// now, exp now plus o.TTL) with the key o names.
func newMinter(o tokenOptions) (func() ([]byte, error), error) {
	var alg jwa.SignatureAlgorithm
	if err := alg.Accept(o.Alg); err != nil {
		return nil, fmt.Errorf("-alg %q: %w", o.Alg, err)
	}
	var key any
	switch {
	case o.Secret != "" && o.KeyFile != "":
		return nil, fmt.Errorf("give -secret (HS*) or -key (a private key), not both")
	case o.Secret != "":
		key = []byte(o.Secret)
	default:
		data, err := os.ReadFile(o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("-key: %w", err)
		}
		if key, err = jwk.ParseKey(data, jwk.WithPEM(true)); err != nil {
			return nil, fmt.Errorf("-key %s: %w", o.KeyFile, err)
		}
	}
	mint := func() ([]byte, error) {
		now := time.Now()
		b := jwt.NewBuilder().Subject("bench").IssuedAt(now)
		if o.TTL > 0 {
			b = b.Expiration(now.Add(o.TTL))
		}
		token, err := b.Build()
		if err != nil {
			return nil, fmt.Errorf("build token: %w", err)
		}
		signed, err := jwt.Sign(token, jwt.WithKey(alg, key))
		if err != nil {
			return nil, fmt.Errorf("sign with %s: %w", alg, err)
		}
		return signed, nil
	}
	// Sign once now, so a key that does not fit the algorithm is reported
	// before the run rather than by every connection.
	if _, err := mint(); err != nil {
		return nil, err
	}
	return mint, nil
}
