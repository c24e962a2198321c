// Package registrytest runs a real OCI registry (distribution/v3, filesystem
// storage) on 127.0.0.1 for tests, benchmarks and demos, optionally behind
// Bearer token auth served by an embedded token server (at /token on the
// registry's own host and port, or on a port of its own). It counts what the
// registry serves, so callers can prove which pulls reached it, and pushes
// generated images whose layers are real gzip tarballs that container
// runtimes can unpack.
package registrytest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"

	// The registry's auth and storage back ends register themselves.
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

// Registry is a running registry.
type Registry struct {
	// URL is the registry's base URL, http://127.0.0.1:<port>.
	URL *url.URL
	// Host is URL's host:port.
	Host string

	srv    *http.Server
	tokens *tokenServer // nil without token auth
	dir    string
	ownDir bool
	admin  [2]string // user and password the fixture pushes with

	egress *rate.Limiter // nil: unlimited

	mu    sync.Mutex
	stats Stats
}

// Stats counts what the registry served.
type Stats struct {
	// Requests counts every request.
	Requests int
	// BlobGETs counts GETs of each blob.
	BlobGETs map[digest.Digest]int
	// BlobBytes is the body bytes sent in answer to blob GETs.
	BlobBytes int64
	// ManifestGETs counts GETs of manifests by "repo:ref" (ref a tag or a
	// digest).
	ManifestGETs map[string]int
	// BlobRanges lists the Range headers of each blob's GETs that had one,
	// in order.
	BlobRanges map[digest.Digest][]string
}

type options struct {
	users    map[string]string
	dir      string
	listen   string
	ownRealm bool
	egress   int64
}

// Option configures a Registry.
type Option func(*options)

// WithTokenAuth puts the registry behind Bearer token auth. users maps user
// names to passwords; they get pull and push on every repository. Anonymous
// token requests get a token with no access.
func WithTokenAuth(users map[string]string) Option {
	return func(o *options) {
		if o.users == nil {
			o.users = map[string]string{}
		}
		for u, p := range users {
			o.users[u] = p
		}
	}
}

// WithRealmOnOwnPort serves the token realm on a listener of its own
// (http://127.0.0.1:<another port>/token), as a separate auth service would,
// instead of on the registry's own host and port (the default, as GHCR or
// Harbor do). Clients send passwords only to a realm on the registry's own
// host and port.
func WithRealmOnOwnPort() Option { return func(o *options) { o.ownRealm = true } }

// WithDir keeps the registry's storage in dir (default: a temporary
// directory removed by Close).
func WithDir(dir string) Option { return func(o *options) { o.dir = dir } }

// WithEgressRate caps the blob bytes the registry sends, over all its
// connections together, at bytesPerSec, as an origin behind a link of that
// speed.
func WithEgressRate(bytesPerSec int64) Option { return func(o *options) { o.egress = bytesPerSec } }

// WithListen sets the registry's listen address (default 127.0.0.1:0).
func WithListen(addr string) Option { return func(o *options) { o.listen = addr } }

// New starts a registry for a test and closes it when the test ends.
func New(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	r, err := Start(t.Context(), append([]Option{WithDir(t.TempDir())}, opts...)...)
	if err != nil {
		t.Fatalf("start registry: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

// Start starts a registry. ctx bounds only the start.
func Start(ctx context.Context, opts ...Option) (*Registry, error) {
	o := options{listen: "127.0.0.1:0"}
	for _, opt := range opts {
		opt(&o)
	}
	r := &Registry{dir: o.dir}
	if o.egress > 0 {
		r.egress = rate.NewLimiter(rate.Limit(o.egress), int(min(o.egress, 256<<10)))
	}
	if r.dir == "" {
		dir, err := os.MkdirTemp("", "registrytest-")
		if err != nil {
			return nil, err
		}
		r.dir, r.ownDir = dir, true
	}
	r.ResetStats()

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		r.cleanupDir()
		return nil, fmt.Errorf("listen: %w", err)
	}
	r.Host = ln.Addr().String()
	r.URL = &url.URL{Scheme: "http", Host: r.Host}

	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"filesystem":  configuration.Parameters{"rootdirectory": filepath.Join(r.dir, "storage")},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
	}
	cfg.Log.Level = "error"
	cfg.HTTP.Addr = r.Host
	cfg.HTTP.Secret = randomString()
	// The registry logs every request through logrus's standard logger at
	// info level; a fixture keeps only its errors.
	logrus.SetLevel(logrus.ErrorLevel)

	if o.users != nil {
		users := map[string]string{}
		for u, p := range o.users {
			users[u] = p
		}
		r.admin = [2]string{"registrytest-admin", randomString()}
		users[r.admin[0]] = r.admin[1]
		realmHost := r.Host
		if o.ownRealm {
			realmHost = ""
		}
		ts, err := startTokenServer(users, r.dir, realmHost)
		if err != nil {
			_ = ln.Close()
			r.cleanupDir()
			return nil, err
		}
		r.tokens = ts
		cfg.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm":          ts.realm,
			"service":        tokenService,
			"issuer":         tokenIssuer,
			"rootcertbundle": ts.rootBundle,
		}}
	}

	app := handlers.NewApp(ctx, cfg)
	var h http.Handler = r.count(app)
	if r.tokens != nil && r.tokens.srv == nil {
		// The realm on the registry's own host and port; not counted.
		reg, tokens := h, r.tokens
		h = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path == tokenPath && req.Method == http.MethodGet {
				tokens.serveToken(w, req)
				return
			}
			reg.ServeHTTP(w, req)
		})
	}
	r.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// Close stops the registry (and its token server) and removes its storage
// when it created it.
func (r *Registry) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.srv.Shutdown(ctx)
	// Shutdown leaves connections a client opened but never used; Close
	// ends them too, so nothing outlives the registry.
	_ = r.srv.Close()
	if r.tokens != nil {
		r.tokens.close(ctx)
	}
	r.cleanupDir()
}

func (r *Registry) cleanupDir() {
	if r.ownDir {
		_ = os.RemoveAll(r.dir)
	}
}

// Realm returns the token server's URL, or "" without token auth.
func (r *Registry) Realm() string {
	if r.tokens == nil {
		return ""
	}
	return r.tokens.realm
}

// Stats returns a copy of the counters.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.BlobGETs = make(map[digest.Digest]int, len(r.stats.BlobGETs))
	for k, v := range r.stats.BlobGETs {
		s.BlobGETs[k] = v
	}
	s.ManifestGETs = make(map[string]int, len(r.stats.ManifestGETs))
	for k, v := range r.stats.ManifestGETs {
		s.ManifestGETs[k] = v
	}
	s.BlobRanges = make(map[digest.Digest][]string, len(r.stats.BlobRanges))
	for k, v := range r.stats.BlobRanges {
		s.BlobRanges[k] = append([]string(nil), v...)
	}
	return s
}

// ResetStats zeroes the counters.
func (r *Registry) ResetStats() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats = Stats{BlobGETs: map[digest.Digest]int{}, ManifestGETs: map[string]int{}, BlobRanges: map[digest.Digest][]string{}}
}

var (
	blobPath     = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[a-f0-9]{64})$`)
	manifestPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)
)

// count wraps the registry with the counters.
func (r *Registry) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.stats.Requests++
		r.mu.Unlock()
		if req.Method != http.MethodGet {
			next.ServeHTTP(w, req)
			return
		}
		if m := blobPath.FindStringSubmatch(req.URL.Path); m != nil {
			if rg := req.Header.Get("Range"); rg != "" {
				r.mu.Lock()
				r.stats.BlobRanges[digest.Digest(m[2])] = append(r.stats.BlobRanges[digest.Digest(m[2])], rg)
				r.mu.Unlock()
			}
			next.ServeHTTP(&countingWriter{ResponseWriter: w, r: r, blob: digest.Digest(m[2]), ctx: req.Context()}, req)
			return
		}
		if m := manifestPath.FindStringSubmatch(req.URL.Path); m != nil {
			r.mu.Lock()
			r.stats.ManifestGETs[m[1]+":"+m[2]]++
			r.mu.Unlock()
		}
		next.ServeHTTP(w, req)
	})
}

// countingWriter counts a blob GET when its status is written and its
// bytes as they are written, so the counters are up to date before the
// client has seen the end of the answer.
type countingWriter struct {
	http.ResponseWriter
	r       *Registry
	blob    digest.Digest
	ctx     context.Context
	written bool
}

func (c *countingWriter) WriteHeader(code int) {
	if !c.written {
		c.written = true
		if code < 300 {
			c.r.mu.Lock()
			c.r.stats.BlobGETs[c.blob]++
			c.r.mu.Unlock()
		}
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if !c.written {
		c.WriteHeader(http.StatusOK)
	}
	if c.r.egress == nil {
		c.r.mu.Lock()
		c.r.stats.BlobBytes += int64(len(p))
		c.r.mu.Unlock()
		return c.ResponseWriter.Write(p)
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), c.r.egress.Burst())
		if err := c.r.egress.WaitN(c.ctx, n); err != nil {
			return written, err
		}
		m, err := c.ResponseWriter.Write(p[:n])
		written += m
		c.r.mu.Lock()
		c.r.stats.BlobBytes += int64(m)
		c.r.mu.Unlock()
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

var errNoTokenAuth = errors.New("registry has no token auth")
