// Package cmd is the registry-cache command: it parses flags, loads and
// validates the configuration, wires the manifest cache and the /v2/ server
// in front of the upstream registry, and serves them with /healthz and
// /metrics until its context ends.
//
// Run has no global state (no flag.CommandLine, no global prometheus
// registry, no global logger), so tests run many registry caches in one
// process.
package cmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/pkg/version"
	"github.com/damselfly/damselfly/registry-cache/server"
)

const (
	dialTimeout           = 10 * time.Second
	tlsHandshakeTimeout   = 10 * time.Second
	responseHeaderTimeout = 30 * time.Second
)

// Option configures Run.
type Option func(*runOptions)

type runOptions struct {
	log    *zap.Logger
	ready  func(net.Addr)
	hc     *http.Client
	stdout io.Writer
	stderr io.Writer
}

// WithLogger makes Run log to l instead of building a logger from the
// configuration.
func WithLogger(l *zap.Logger) Option {
	return func(o *runOptions) { o.log = l }
}

// WithReady is called with the listener's address once it is bound, before
// any request is served.
func WithReady(fn func(addr net.Addr)) Option {
	return func(o *runOptions) { o.ready = fn }
}

// WithHTTPClient makes the cache and the pass-through reach the upstream
// with hc instead of the client built by Run from the source policy. It is a
// test seam: hc is not checked against the policy.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *runOptions) { o.hc = hc }
}

// WithStdout sets where --help and --version are written (default
// os.Stdout).
func WithStdout(w io.Writer) Option {
	return func(o *runOptions) { o.stdout = w }
}

// WithStderr sets where logs go when no logger is given (default
// os.Stderr).
func WithStderr(w io.Writer) Option {
	return func(o *runOptions) { o.stderr = w }
}

// flags holds the parsed command line.
type flags struct {
	config, listen, upstream string
	common                   command.CommonFlags
	version                  bool
}

func newFlagSet(f *flags, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("registry-cache", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&f.config, "config", "", "YAML config `file` (see docs/registry-cache.md); flags override it")
	fs.StringVar(&f.listen, "listen", "", "`host:port` of the HTTP listener (default "+DefaultListen+")")
	fs.StringVar(&f.upstream, "upstream", "", "base `URL` of the upstream registry, scheme://host[:port] (default "+DefaultUpstream+")")
	f.common.Register(fs, "the upstream (its token realm, its redirects)")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: registry-cache [flags]\n\n"+
			"The Damselfly registry cache: a pull-through manifest cache in front of one registry,\n"+
			"serving the OCI distribution read API on /v2/.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs
}

// Run runs the registry cache with the command-line args until ctx is done.
// It returns nil after a clean shutdown, and an error for a bad command line
// or config before anything listens.
func Run(ctx context.Context, args []string, opts ...Option) error {
	o := runOptions{stdout: os.Stdout, stderr: os.Stderr}
	for _, opt := range opts {
		opt(&o)
	}
	var f flags
	fset := newFlagSet(&f, o.stdout)
	if done, err := command.ParseArgs(fset, args); done || err != nil {
		return err
	}
	cfg, err := buildConfig(fset, &f)
	if err != nil {
		return err
	}
	logger, sync, err := command.Logger(o.log, cfg.Log, o.stderr)
	if err != nil {
		return err
	}
	defer sync()
	return command.Exit(run(ctx, cfg, o, logger))
}

// buildConfig layers defaults, the config file and the flags, then
// validates the result.
func buildConfig(fset *flag.FlagSet, f *flags) (Config, error) {
	return command.Load(f.config, func(cfg *Config) {
		fset.Visit(func(fl *flag.Flag) {
			if f.common.Apply(fl.Name, &cfg.Log, &cfg.Source) {
				return
			}
			switch fl.Name {
			case "listen":
				cfg.Listen = f.listen
			case "upstream":
				cfg.Upstream = f.upstream
			}
		})
	})
}

// upstreamClient is the HTTP client towards the upstream: every connection
// is checked against the source policy at dial time, by resolved IP, each
// redirect hop included (at most netpolicy.MaxRedirects); proxy environment
// variables are ignored (the check applies to the destination itself);
// bounded TLS handshake and wait for response headers, no bound on a body
// (blobs stream for as long as they take); Go drops Authorization on a hop
// to another host.
func upstreamClient(c netpolicy.Config) (*http.Client, error) {
	p, err := netpolicy.New(c, netpolicy.WithHint("--source-allow or source.allow"))
	if err != nil {
		return nil, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSHandshakeTimeout = tlsHandshakeTimeout
	t.ResponseHeaderTimeout = responseHeaderTimeout
	t.MaxIdleConnsPerHost = 32
	hc := p.HTTPClient(t)
	hc.Transport.(*http.Transport).DialContext = p.DialContext(&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second})
	return hc, nil
}

// run wires and runs the components.
func run(ctx context.Context, cfg Config, o runOptions, logger *zap.Logger) error {
	upstream, err := parseUpstream(cfg.Upstream)
	if err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	hc := o.hc
	if hc == nil {
		if hc, err = upstreamClient(cfg.Source); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		defer hc.CloseIdleConnections()
	}
	d := command.NewDaemon(logger)
	reg := d.Registry
	fetcher := registrysource.New(registrysource.WithHTTPClient(hc), registrysource.WithLogger(logger.Named("registry")))
	mc, err := manifestcache.New(cfg.Cache, fetcher, manifestcache.WithLogger(logger.Named("cache")), manifestcache.WithMetrics(reg))
	if err != nil {
		return err
	}
	httpm := httpx.NewMetrics(reg, "damselfly")
	srv, err := server.New(mc, upstream, server.WithHTTPClient(hc),
		server.WithLogger(logger.Named("server")), server.WithHTTPMetrics(httpm))
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()

	d.Mux.Handle("/v2/", srv.Handler())
	d.Mux.Handle("/v2", srv.Handler())
	hs := d.Server(nil)
	logger.Info("registry-cache listening",
		zap.String("addr", ln.Addr().String()), zap.String("upstream", upstream.String()),
		zap.Duration("tagTTL", cfg.Cache.TagTTL), zap.Stringer("maxBytes", cfg.Cache.MaxBytes),
		zap.String("version", version.Version()))
	if o.ready != nil {
		o.ready(ln.Addr())
	}

	err = d.Run(ctx, hs, ln)
	logger.Info("registry-cache stopped")
	return err
}
