package registrytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/auth/token"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	tokenService = "registrytest"
	tokenIssuer  = "registrytest-issuer"
	tokenTTL     = 5 * time.Minute
)

// tokenServer issues the Bearer tokens the registry's token access
// controller accepts: ES256 JWTs whose key is the public key of the root
// certificate the registry trusts.
type tokenServer struct {
	realm      string
	rootBundle string
	users      map[string]string
	key        *ecdsa.PrivateKey
	kid        string
	srv        *http.Server
}

// startTokenServer starts the token server: on the registry's listener at
// registryHost (its realm is then http://<registryHost>/token), or on a
// listener of its own when registryHost is empty.
func startTokenServer(users map[string]string, dir, registryHost string) (*tokenServer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: tokenIssuer},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	bundle := filepath.Join(dir, "token-root.pem")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	ts := &tokenServer{
		rootBundle: bundle,
		users:      users,
		key:        key,
		kid:        token.GetJWKThumbprint(&key.PublicKey),
	}
	if registryHost != "" {
		// The registry's own listener serves /token.
		ts.realm = "http://" + registryHost + tokenPath
		return ts, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ts.realm = "http://" + ln.Addr().String() + tokenPath
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+tokenPath, ts.serveToken)
	ts.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = ts.srv.Serve(ln) }()
	return ts, nil
}

// tokenPath is the token endpoint's path.
const tokenPath = "/token"

func (ts *tokenServer) close(ctx context.Context) {
	if ts.srv == nil {
		return // served by the registry's listener
	}
	_ = ts.srv.Shutdown(ctx)
	_ = ts.srv.Close()
}

// serveToken follows the registry token protocol: Basic credentials (or
// none) and scope parameters in, a signed token out. Known users get pull
// and push on what they ask for; anonymous callers get a token with no
// access; wrong credentials get 401.
func (ts *tokenServer) serveToken(w http.ResponseWriter, r *http.Request) {
	subject := ""
	if user, pass, ok := r.BasicAuth(); ok {
		want, known := ts.users[user]
		if !known || subtle.ConstantTimeCompare([]byte(want), []byte(pass)) != 1 {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		subject = user
	}
	var access []*token.ResourceActions
	if subject != "" {
		for _, scope := range r.URL.Query()["scope"] {
			if ra := parseScope(scope); ra != nil {
				access = append(access, ra)
			}
		}
	}
	signed, err := ts.sign(subject, r.URL.Query().Get("service"), access)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token":        signed,
		"access_token": signed,
		"expires_in":   int(tokenTTL.Seconds()),
		"issued_at":    time.Now().UTC().Format(time.RFC3339),
	})
}

// parseScope reads "repository:<name>:<actions>"; the name may hold colons
// only in a registry host, which scopes do not carry.
func parseScope(s string) *token.ResourceActions {
	typ, rest, ok := strings.Cut(s, ":")
	if !ok {
		return nil
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return nil
	}
	return &token.ResourceActions{Type: typ, Name: rest[:i], Actions: strings.Split(rest[i+1:], ",")}
}

func (ts *tokenServer) sign(subject, audience string, access []*token.ResourceActions) (string, error) {
	if audience == "" {
		audience = tokenService
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: ts.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", ts.kid))
	if err != nil {
		return "", err
	}
	now := time.Now()
	claims := token.ClaimSet{
		Issuer:     tokenIssuer,
		Subject:    subject,
		Audience:   token.AudienceList{audience},
		Expiration: now.Add(tokenTTL).Unix(),
		NotBefore:  now.Add(-time.Minute).Unix(),
		IssuedAt:   now.Unix(),
		JWTID:      randomString(),
		Access:     access,
	}
	if claims.Access == nil {
		claims.Access = []*token.ResourceActions{}
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// Token fetches a token for scope as a registry client would, with the
// given credentials (empty user: anonymous).
func (r *Registry) Token(ctx context.Context, user, pass, scope string) (string, error) {
	if r.tokens == nil {
		return "", errNoTokenAuth
	}
	u, err := url.Parse(r.tokens.realm)
	if err != nil {
		return "", err
	}
	q := url.Values{"service": {tokenService}}
	if scope != "" {
		q.Set("scope", scope)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("token: status %d", resp.StatusCode)
	}
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return body.Token, nil
}

func randomString() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
