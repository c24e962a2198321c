package registrysource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// maxTokenBody caps a token response.
	maxTokenBody = 1 << 20
	// defaultTokenLifetime is the lifetime of a token whose response gives
	// none (the token spec's default).
	defaultTokenLifetime = 60 * time.Second
)

// Credentials are a caller's own credentials for a registry. Token, when
// set, is sent as "Authorization: Bearer <Token>" without asking a realm;
// otherwise Username and Password answer the registry's challenge.
type Credentials struct {
	Username, Password, Token string
}

// IsZero reports whether c holds no credentials.
func (c Credentials) IsZero() bool { return c.Username == "" && c.Password == "" && c.Token == "" }

// String hides the secrets.
func (c Credentials) String() string {
	if c.IsZero() {
		return "anonymous"
	}
	if c.Token != "" {
		return "token"
	}
	return "user " + c.Username
}

// Authorizer authenticates pulls of one repository with the caller's own
// credentials, answering the registry's Bearer or Basic challenge (see the
// package doc). It is safe for concurrent use.
type Authorizer struct {
	c     *Client
	base  *url.URL
	repo  string
	creds Credentials

	mu       sync.Mutex
	pinged   bool
	chal     *challenge
	stale    string // a token the registry refused; not to be reused
	lastAuth string
}

// Authorizer returns an Authorizer for pulls of repo from the registry at
// base.
func (c *Client) Authorizer(base *url.URL, repo string, creds Credentials) (*Authorizer, error) {
	if err := checkBase(base); err != nil {
		return nil, err
	}
	if err := ValidateRepository(repo); err != nil {
		return nil, err
	}
	b := *base
	return &Authorizer{c: c, base: &b, repo: repo, creds: creds}, nil
}

// Header returns the headers that authorize a pull of the repository: an
// Authorization header, or none when the registry asks for nothing. The
// first call asks the registry (GET /v2/) for its challenge.
func (a *Authorizer) Header(ctx context.Context) (http.Header, error) {
	h, err := a.header(ctx)
	if err != nil {
		return nil, err
	}
	return h.Clone(), nil
}

func (a *Authorizer) header(ctx context.Context) (http.Header, error) {
	if a.creds.Token != "" {
		return http.Header{"Authorization": {"Bearer " + a.creds.Token}}, nil
	}
	a.mu.Lock()
	pinged, ch := a.pinged, a.chal
	a.mu.Unlock()
	if !pinged {
		var err error
		if ch, err = a.ping(ctx); err != nil {
			return nil, err
		}
		a.mu.Lock()
		if !a.pinged {
			a.pinged, a.chal = true, ch
		}
		ch = a.chal
		a.mu.Unlock()
	}
	if ch == nil {
		return http.Header{}, nil
	}
	switch ch.scheme {
	case "basic":
		if a.creds.Username == "" && a.creds.Password == "" {
			return http.Header{}, nil
		}
		r := http.Request{Header: http.Header{}}
		r.SetBasicAuth(a.creds.Username, a.creds.Password)
		return http.Header{"Authorization": r.Header.Values("Authorization")}, nil
	case "bearer":
		a.mu.Lock()
		stale := a.stale
		a.mu.Unlock()
		tok, err := a.c.token(ctx, a.base, *ch, "repository:"+a.repo+":pull", a.creds, stale)
		if err != nil {
			return nil, err
		}
		v := "Bearer " + tok
		a.mu.Lock()
		a.lastAuth = v
		a.mu.Unlock()
		return http.Header{"Authorization": {v}}, nil
	}
	return http.Header{}, nil
}

// challenged learns the challenge of a 401. A Bearer token the registry
// refused is not reused.
func (a *Authorizer) challenged(resp *http.Response) bool {
	if a.creds.Token != "" {
		return false
	}
	ch := pickChallenge(resp.Header.Values("WWW-Authenticate"))
	if ch == nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pinged, a.chal = true, ch
	if used := resp.Request.Header.Get("Authorization"); used != "" && used == a.lastAuth {
		a.stale = strings.TrimPrefix(used, "Bearer ")
	}
	return true
}

// ping asks the registry's /v2/ for its challenge; nil when it has none.
func (a *Authorizer) ping(ctx context.Context) (*challenge, error) {
	u := pingURL(a.base)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("registry ping %s: %w", u, err)
	}
	resp, err := a.c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("registry ping %s: %w", u, stripURL(err))
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusUnauthorized {
		return nil, nil
	}
	return pickChallenge(resp.Header.Values("WWW-Authenticate")), nil
}

// token returns a bearer token for scope, from the cache or the
// challenge's realm. A token equal to refused is not taken from the cache.
func (c *Client) token(ctx context.Context, base *url.URL, ch challenge, scope string, creds Credentials, refused string) (string, error) {
	realm, err := url.Parse(ch.params["realm"])
	if err != nil || (realm.Scheme != "http" && realm.Scheme != "https") || realm.Host == "" || realm.User != nil {
		return "", fmt.Errorf("registry %s: bearer challenge with an invalid realm: %w", base.Host, ErrInvalid)
	}
	realm.Fragment = ""
	send := creds.Username != "" || creds.Password != ""
	if send && !SameOrigin(realm, base) {
		c.log.Warn("token realm is on another host or port: asking for an anonymous token",
			zap.String("registry", base.Host), zap.String("realm", realm.Host))
		send = false
	}
	if send && realm.Scheme == "http" && base.Scheme == "https" {
		c.log.Warn("token realm is plain http while the registry is https: asking for an anonymous token",
			zap.String("registry", base.Host), zap.String("realm", realm.Host))
		send = false
	}
	q := realm.Query()
	if svc := ch.params["service"]; svc != "" {
		q.Set("service", svc)
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()
	key := realm.String()
	if send {
		sum := sha256.Sum256([]byte(creds.Username + "\x00" + creds.Password))
		key += "\x00" + hex.EncodeToString(sum[:])
	}
	if tok, ok := c.tokens.get(key); ok && tok != refused {
		return tok, nil
	}
	if refused != "" {
		c.tokens.drop(key, refused)
	}
	v, err, _ := c.tokenFlight.Do(key, func() (any, error) {
		if tok, ok := c.tokens.get(key); ok && tok != refused {
			return tok, nil
		}
		tok, life, err := c.fetchToken(ctx, realm, creds, send)
		if err != nil {
			return "", err
		}
		c.tokens.put(key, tok, life)
		return tok, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// fetchToken asks realm (which carries service and scope) for a token.
func (c *Client) fetchToken(ctx context.Context, realm *url.URL, creds Credentials, send bool) (string, time.Duration, error) {
	name := realm.Scheme + "://" + realm.Host + realm.Path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return "", 0, fmt.Errorf("token from %s: %w", name, err)
	}
	if send {
		req.SetBasicAuth(creds.Username, creds.Password)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("token from %s: %w", name, stripURL(err))
	}
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("token from %s: %w", name, responseError(http.MethodGet, name, resp))
	}
	defer drain(resp)
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBody+1))
	if err != nil {
		return "", 0, fmt.Errorf("token from %s: read: %w", name, err)
	}
	if len(body) > maxTokenBody {
		return "", 0, fmt.Errorf("token from %s: %w", name, ErrTooLarge)
	}
	var tr struct {
		Token       string    `json:"token"`
		AccessToken string    `json:"access_token"`
		ExpiresIn   int64     `json:"expires_in"`
		IssuedAt    time.Time `json:"issued_at"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return "", 0, fmt.Errorf("token from %s: decode response: %w", name, errors.New("not a token response"))
	}
	tok := tr.Token
	if tok == "" {
		tok = tr.AccessToken
	}
	if tok == "" {
		return "", 0, fmt.Errorf("token from %s: response has no token", name)
	}
	life := defaultTokenLifetime
	if tr.ExpiresIn > 0 {
		life = time.Duration(min(tr.ExpiresIn, 24*3600)) * time.Second
	}
	if !tr.IssuedAt.IsZero() {
		// Count from when it was issued, if that is in the past.
		if age := c.now().Sub(tr.IssuedAt); age > 0 && age < life {
			life -= age
		}
	}
	// Stop using it a little before the registry does.
	life -= min(life/10, 30*time.Second)
	return tok, life, nil
}

// tokenCache holds tokens until they expire; bounded.
type tokenCache struct {
	max int
	now func() time.Time
	mu  sync.Mutex
	m   map[string]tokenEntry
}

type tokenEntry struct {
	token   string
	expires time.Time
}

func newTokenCache(maxEntries int, now func() time.Time) *tokenCache {
	return &tokenCache{max: maxEntries, now: now, m: map[string]tokenEntry{}}
}

func (tc *tokenCache) get(key string) (string, bool) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	e, ok := tc.m[key]
	if !ok || !tc.now().Before(e.expires) {
		return "", false
	}
	return e.token, true
}

func (tc *tokenCache) put(key, token string, life time.Duration) {
	if life <= 0 {
		return
	}
	tc.mu.Lock()
	defer tc.mu.Unlock()
	now := tc.now()
	if len(tc.m) >= tc.max {
		for k, e := range tc.m {
			if !now.Before(e.expires) {
				delete(tc.m, k)
			}
		}
	}
	for k := range tc.m {
		if len(tc.m) < tc.max {
			break
		}
		delete(tc.m, k)
	}
	tc.m[key] = tokenEntry{token: token, expires: now.Add(life)}
}

// drop removes key if it still holds token.
func (tc *tokenCache) drop(key, token string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if e, ok := tc.m[key]; ok && e.token == token {
		delete(tc.m, key)
	}
}

// challenge is one WWW-Authenticate challenge.
type challenge struct {
	scheme string // lowercase
	params map[string]string
}

// pickChallenge parses WWW-Authenticate values and picks Bearer over Basic;
// nil when there is neither.
func pickChallenge(values []string) *challenge {
	var basic *challenge
	for _, v := range values {
		for _, ch := range parseChallenges(v) {
			switch ch.scheme {
			case "bearer":
				if ch.params["realm"] != "" {
					return &ch
				}
			case "basic":
				if basic == nil {
					basic = &ch
				}
			}
		}
	}
	return basic
}

// parseChallenges parses one WWW-Authenticate value (RFC 7235): challenges
// "scheme k=v, k="quoted", scheme2 ..." separated by commas.
func parseChallenges(s string) []challenge {
	var out []challenge
	var cur *challenge
	for i := 0; i < len(s); {
		// Skip separators.
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == ',') {
			i++
		}
		if i >= len(s) {
			break
		}
		j := i
		for j < len(s) && isTokenChar(s[j]) {
			j++
		}
		if j == i {
			// Not a token: skip the character.
			i++
			continue
		}
		word := s[i:j]
		k := j
		for k < len(s) && (s[k] == ' ' || s[k] == '\t') {
			k++
		}
		if k < len(s) && s[k] == '=' && cur != nil {
			// An auth-param of the current challenge.
			k++
			for k < len(s) && (s[k] == ' ' || s[k] == '\t') {
				k++
			}
			var val string
			if k < len(s) && s[k] == '"' {
				var b strings.Builder
				k++
				for k < len(s) && s[k] != '"' {
					if s[k] == '\\' && k+1 < len(s) {
						k++
					}
					b.WriteByte(s[k])
					k++
				}
				k++ // closing quote
				val = b.String()
			} else {
				e := k
				for e < len(s) && isTokenChar(s[e]) {
					e++
				}
				val = s[k:e]
				k = e
			}
			cur.params[strings.ToLower(word)] = val
			i = k
			continue
		}
		// A new challenge.
		out = append(out, challenge{scheme: strings.ToLower(word), params: map[string]string{}})
		cur = &out[len(out)-1]
		i = j
	}
	return out
}

func isTokenChar(b byte) bool {
	if b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~/:", b) >= 0
}

// SameOrigin reports whether a and b name the same host (case-insensitive)
// and the same port, a port left out being its scheme's default (443 for
// https, 80 for http). It is the rule for where a password may go: to a
// token realm only on the registry's own host and port, since another port
// of the same host can be another service, run by someone else.
func SameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Hostname(), b.Hostname()) && effectivePort(a) == effectivePort(b)
}

// effectivePort is u's port, or its scheme's default.
func effectivePort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return "443"
	case "http":
		return "80"
	}
	return ""
}
