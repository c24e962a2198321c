// Package registrysource is a client of the OCI distribution read API: it
// builds /v2/ URLs, fetches and verifies manifests, checks blobs with HEAD
// and resolves an image reference to its config and layers.
//
// # Names and references
//
// Repository names are checked against the path grammar of
// github.com/distribution/reference and references against its tag grammar
// or as sha256 digests before any URL is built; anything else is ErrInvalid.
// ManifestURL, BlobURL and TagsURL build the URLs of a registry whose base URL
// is scheme://host[:port].
//
// # Credentials
//
// Two modes. Pass-through: GetManifest, HeadManifest and HeadBlob send the
// header they are given (for example a runtime's own "Authorization: Bearer
// ...") as it is, with no token dance, and a 401 comes back as a
// *ResponseError carrying the registry's WWW-Authenticate challenge so the
// caller can hand it to its own client. Own credentials: an *Authorizer
// (Client.Authorizer) answers the registry's challenge itself. For Bearer it
// asks the realm for a token with service and scope=repository:<repo>:pull,
// sending the username and password with Basic auth only when the realm is
// served by the registry's own host and port (SameOrigin) over a scheme at
// least as safe as the registry's; otherwise it asks anonymously and logs a
// warning. Tokens
// are cached by the Client until shortly before they expire. For Basic it
// sends the credentials to the registry. A Credentials.Token is used as the
// bearer token as it is. Resolve uses an Authorizer.
//
// Credentials, tokens and Authorization headers are never logged, and are
// not part of any error.
//
// # Verification
//
// A manifest fetched by digest must hash to that digest. A manifest fetched
// by tag is hashed (sha256) and, when the registry sends
// Docker-Content-Digest, must match it: a header that disagrees with the body
// is ErrDigestMismatch, never a manifest. Manifests larger than the limit
// (4 MiB by default) are ErrTooLarge.
//
// # Errors
//
// A registry status other than 2xx is a *ResponseError; a 404 also matches
// errors.Is(err, source.ErrNotFound).
package registrysource

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/damselfly/damselfly/pkg/source"
)

var (
	// ErrInvalid: a repository name, reference or digest does not follow
	// the distribution grammar.
	ErrInvalid = errors.New("registrysource: invalid name or reference")
	// ErrDigestMismatch: content does not match its digest, or the
	// registry's Docker-Content-Digest disagrees with the body.
	ErrDigestMismatch = errors.New("registrysource: digest mismatch")
	// ErrTooLarge: a manifest (or token response) exceeds the size limit.
	ErrTooLarge = errors.New("registrysource: response too large")
	// ErrUnsupported: a manifest of a media type that cannot be resolved
	// (for example schema 1).
	ErrUnsupported = errors.New("registrysource: unsupported manifest")
	// ErrPlatformNotFound: an index has no manifest for the platform.
	ErrPlatformNotFound = errors.New("registrysource: no manifest for platform")
)

const (
	// DefaultMaxManifestSize is the default limit of a manifest body.
	DefaultMaxManifestSize = 4 << 20
	// maxErrorBody caps the body kept in a ResponseError.
	maxErrorBody  = 64 << 10
	maxRedirects  = 10
	tokenCacheMax = 1024
)

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client, for example one whose dialer enforces
// an outbound policy. Its redirect policy is kept (Go's default drops
// Authorization on a hop to another host).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.hc = hc
		}
	}
}

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.log = l
		}
	}
}

// WithInsecureRegistries lists registries Resolve reaches over plain http
// instead of https: "host:port" matches that address, a bare "host" any port
// of that host.
func WithInsecureRegistries(hosts []string) Option {
	return func(c *Client) {
		for _, h := range hosts {
			if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
				c.insecure[h] = true
			}
		}
	}
}

// WithMaxManifestSize sets the largest manifest body accepted (default
// 4 MiB).
func WithMaxManifestSize(n int64) Option {
	return func(c *Client) {
		if n > 0 {
			c.maxManifest = n
		}
	}
}

// Client talks to registries. It is safe for concurrent use.
type Client struct {
	hc          *http.Client
	log         *zap.Logger
	insecure    map[string]bool
	maxManifest int64
	tokens      *tokenCache
	tokenFlight singleflight.Group
	now         func() time.Time
}

// New returns a client.
func New(opts ...Option) *Client {
	c := &Client{
		log:         zap.NewNop(),
		insecure:    map[string]bool{},
		maxManifest: DefaultMaxManifestSize,
		now:         time.Now,
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = time.Minute
		c.hc = &http.Client{
			Transport: tr,
			CheckRedirect: func(_ *http.Request, via []*http.Request) error {
				if len(via) >= maxRedirects {
					return fmt.Errorf("stopped after %d redirects", maxRedirects)
				}
				return nil
			},
		}
	}
	c.tokens = newTokenCache(tokenCacheMax, c.now)
	return c
}

// ResponseError is a registry answer with an unexpected status. Callers that
// serve their own clients pass StatusCode, Header and Body through (a 401
// with its WWW-Authenticate challenge lets the client get its own token).
type ResponseError struct {
	// Method and URL of the request (without query).
	Method, URL string
	StatusCode  int
	// Header holds only WWW-Authenticate, Content-Type, Retry-After and the
	// Docker-* headers of the response.
	Header http.Header
	// Body is the start of the response body, at most 64 KiB.
	Body []byte
}

func (e *ResponseError) Error() string {
	msg := fmt.Sprintf("registry %s %s: status %d %s", e.Method, e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	if errs := e.Errors(); len(errs) > 0 {
		msg += ": " + errs.Error()
	}
	return msg
}

// Is makes a 404 match source.ErrNotFound.
func (e *ResponseError) Is(target error) bool {
	return target == source.ErrNotFound && e.StatusCode == http.StatusNotFound
}

// Errors decodes the body as distribution-spec error JSON ({"errors":[...]});
// nil when it is not.
func (e *ResponseError) Errors() errcode.Errors {
	if len(e.Body) == 0 {
		return nil
	}
	var env struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(e.Body, &env) != nil || len(env.Errors) == 0 {
		return nil
	}
	out := make(errcode.Errors, 0, len(env.Errors))
	for _, ee := range env.Errors {
		code := errcode.ParseErrorCode(ee.Code)
		msg := ee.Message
		if msg == "" {
			msg = code.Message()
		}
		out = append(out, errcode.Error{Code: code, Message: msg})
	}
	return out
}

// keptHeaders are the response headers a ResponseError keeps.
func keptHeaders(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		switch {
		case ck == "Www-Authenticate", ck == "Content-Type", ck == "Retry-After",
			strings.HasPrefix(ck, "Docker-"):
			out[ck] = append([]string(nil), v...)
		}
	}
	return out
}
