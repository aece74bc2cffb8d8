package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// minRSABits is the smallest RSA key keygen makes; shorter keys are
// considered breakable (NIST SP 800-131A).
const minRSABits = 2048

// Names of the files keygen writes into its -out directory.
const (
	privateKeyFile = "private.pem"
	publicKeyFile  = "public.pem"
	jwksFile       = "jwks.json"
)

// generatedKey is a new key pair and how the JWKS describes it.
type generatedKey struct {
	Private crypto.Signer
	Alg     jwa.SignatureAlgorithm
	KeyID   string
}

func keygenCommand(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("keygen", "[-type ec|rsa|ed25519] [flags]",
		"Writes private.pem, public.pem and jwks.json for signing and verifying test tokens.", stderr)
	keyType := flags.String("type", "ec", "key type: rsa, ec or ed25519")
	bits := flags.Int("bits", minRSABits, "RSA key size in bits (-type rsa)")
	curve := flags.String("curve", "P-256", "EC curve: P-256, P-384 or P-521 (-type ec)")
	kid := flags.String("kid", "", "key ID in the JWKS (default: the key's RFC 7638 thumbprint)")
	dir := flags.String("out", ".", "directory to write the files into")
	force := flags.Bool("force", false, "overwrite existing files")
	if err := parseFlags(flags, args, 0); err != nil {
		return err
	}
	// A flag that does not apply to the type is a mistake worth reporting,
	// not something to ignore.
	if flagWasSet(flags, "bits") && *keyType != "rsa" {
		return fmt.Errorf("-bits applies to -type rsa only")
	}
	if flagWasSet(flags, "curve") && *keyType != "ec" {
		return fmt.Errorf("-curve applies to -type ec only")
	}

	key, err := generateKey(*keyType, *bits, *curve)
	if err != nil {
		return err
	}
	if *kid != "" {
		key.KeyID = *kid
	}
	paths, err := writeKeyFiles(*dir, key, *force)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "private key: %s\npublic key:  %s\nJWKS:        %s\nkid:         %s\nalg:         %s\n",
		paths[0], paths[1], paths[2], key.KeyID, key.Alg)
	return nil
}

// generateKey makes a key pair of the given type and names it by its
// RFC 7638 thumbprint.
func generateKey(keyType string, bits int, curveName string) (generatedKey, error) {
	var key generatedKey
	var err error
	switch keyType {
	case "rsa":
		if bits < minRSABits {
			return key, fmt.Errorf("-bits %d is too small; use at least %d", bits, minRSABits)
		}
		key.Alg = jwa.RS256
		key.Private, err = rsa.GenerateKey(rand.Reader, bits)
	case "ec":
		var curve elliptic.Curve
		for alg, c := range ecdsaCurves {
			if c.Params().Name == curveName {
				key.Alg, curve = alg, c
			}
		}
		if curve == nil {
			return key, fmt.Errorf("-curve %q is not supported; use P-256, P-384 or P-521", curveName)
		}
		key.Private, err = ecdsa.GenerateKey(curve, rand.Reader)
	case "ed25519":
		key.Alg = jwa.EdDSA
		_, key.Private, err = ed25519.GenerateKey(rand.Reader)
	default:
		return key, fmt.Errorf("-type %q is not supported; use rsa, ec or ed25519", keyType)
	}
	if err != nil {
		return key, fmt.Errorf("generate %s key: %w", keyType, err)
	}
	public, err := jwk.FromRaw(key.Private.Public())
	if err != nil {
		return key, fmt.Errorf("public JWK: %w", err)
	}
	thumbprint, err := public.Thumbprint(crypto.SHA256)
	if err != nil {
		return key, fmt.Errorf("thumbprint: %w", err)
	}
	key.KeyID = base64.RawURLEncoding.EncodeToString(thumbprint)
	return key, nil
}

// writeKeyFiles writes private.pem (PKCS8, mode 0600), public.pem (PKIX)
// and jwks.json into dir, creating dir if needed, and returns their paths
// in that order. Unless force is set it writes nothing when any of the
// three exists.
func writeKeyFiles(dir string, key generatedKey, force bool) ([3]string, error) {
	paths := [3]string{
		filepath.Join(dir, privateKeyFile),
		filepath.Join(dir, publicKeyFile),
		filepath.Join(dir, jwksFile),
	}
	privateDER, err := x509.MarshalPKCS8PrivateKey(key.Private)
	if err != nil {
		return paths, fmt.Errorf("encode private key: %w", err)
	}
	publicDER, err := x509.MarshalPKIXPublicKey(key.Private.Public())
	if err != nil {
		return paths, fmt.Errorf("encode public key: %w", err)
	}
	jwks, err := publicJWKS(key)
	if err != nil {
		return paths, err
	}
	contents := [3][]byte{
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privateDER}),
		pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: publicDER}),
		jwks,
	}
	modes := [3]os.FileMode{0o600, 0o644, 0o644}

	if !force {
		for _, path := range paths {
			if _, err := os.Lstat(path); err == nil {
				return paths, fmt.Errorf("%s exists; use -force to overwrite it", path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return paths, err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return paths, fmt.Errorf("create -out directory: %w", err)
	}
	for i, path := range paths {
		if err := writeNewFile(path, contents[i], modes[i], force); err != nil {
			return paths, err
		}
	}
	return paths, nil
}

// writeNewFile writes data to path with mode. Without overwrite it fails if
// path exists; with it, an existing file gets mode too, so a private key
// never stays world-readable from an earlier file.
func writeNewFile(path string, data []byte, mode os.FileMode, overwrite bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if overwrite {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// publicJWKS returns a JWK Set holding key's public half with kid, alg and
// use=sig, which the proxy's JWKS authenticator needs to pick it.
func publicJWKS(key generatedKey) ([]byte, error) {
	public, err := jwk.FromRaw(key.Private.Public())
	if err != nil {
		return nil, fmt.Errorf("public JWK: %w", err)
	}
	for name, value := range map[string]any{
		jwk.KeyIDKey:     key.KeyID,
		jwk.AlgorithmKey: key.Alg,
		jwk.KeyUsageKey:  jwk.ForSignature,
	} {
		if err := public.Set(name, value); err != nil {
			return nil, fmt.Errorf("JWK %s: %w", name, err)
		}
	}
	set := jwk.NewSet()
	if err := set.AddKey(public); err != nil {
		return nil, fmt.Errorf("JWK set: %w", err)
	}
	data, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode JWKS: %w", err)
	}
	return append(data, '\n'), nil
}
