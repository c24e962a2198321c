// Package cmd is the dfdaemon command: it parses flags, loads and validates
// the configuration, and runs a node's long-lived peer: the peer engine and
// its upload server, the blob cache with its disk quota, and one
// runtime-facing listener serving the registry mirror (/v2/...), the forward
// proxy (absolute-form requests and CONNECT), /healthz (liveness), /readyz
// (whether a supernode answers; see readyz.go) and /metrics.
//
// Run has no global state (no flag.CommandLine, no global prometheus
// registry, no global logger), so tests run many dfdaemons in one process.
package cmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/dfdaemon/proxy"
	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/pkg/version"
)

// Option configures Run.
type Option func(*runOptions)

type runOptions struct {
	log       *zap.Logger
	ready     func(mirror, peer net.Addr)
	stdout    io.Writer
	stderr    io.Writer
	lookupEnv func(string) (string, bool)
}

// WithLogger makes Run log to l instead of building a logger from the
// configuration.
func WithLogger(l *zap.Logger) Option {
	return func(o *runOptions) { o.log = l }
}

// WithReady is called with the addresses of the mirror/proxy listener and
// of the upload server once both are bound, before any request is served.
func WithReady(fn func(mirror, peer net.Addr)) Option {
	return func(o *runOptions) { o.ready = fn }
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

// withEnv replaces the environment lookup, for tests.
func withEnv(fn func(string) (string, bool)) Option {
	return func(o *runOptions) { o.lookupEnv = fn }
}

// flags holds the parsed command line.
type flags struct {
	config, listen, peerListen, advertiseIP, supernodes string
	registry, dataDir                                   string
	clusterTokenFile                                    string
	peers                                               netpolicy.Config
	common                                              command.CommonFlags
	downloadRate, uploadRate                            ratelimit.Rate
	version                                             bool
}

func newFlagSet(f *flags, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("dfdaemon", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&f.config, "config", "", "YAML config `file` (see docs/dfdaemon.yaml); flags override it")
	fs.StringVar(&f.listen, "listen", "", "`host:port` of the registry mirror and forward proxy (default "+DefaultListen+")")
	fs.StringVar(&f.peerListen, "peer-listen", "", "`host:port` of the upload server other peers fetch pieces from (default "+DefaultPeerListen+")")
	fs.StringVar(&f.advertiseIP, "advertise-ip", "", "`IP` other peers reach this node at (default: the host of --peer-listen, else the local address towards the first supernode)")
	fs.StringVar(&f.supernodes, "node", "", "comma-separated supernodes `host:port[,host:port]` (default "+DefaultSupernode+")")
	fs.StringVar(&f.clusterTokenFile, "cluster-token-file", "", "`file` holding the supernode's cluster token (or $"+clusterauth.EnvToken+", or clusterToken in the config)")
	fs.StringVar(&f.registry, "registry", "", "upstream `URL` of requests that name no registry: docker registry-mirrors, direct pulls (default "+mirror.DefaultRegistry+")")
	fs.StringVar(&f.dataDir, "data-dir", "", "`dir` of the node's content cache (default "+DefaultDataDir+")")
	f.common.Register(fs, "registries and sources")
	fs.Var(netpolicy.ListFlag{List: &f.peers.Allow}, "peer-allow", "`CIDR|IP|HOST` of peers and CDNs pieces may be fetched from although denied by default; adds to peerPolicy.allow (repeatable, comma-separated)")
	fs.Var(netpolicy.ListFlag{List: &f.peers.Deny}, "peer-deny", "`CIDR|IP|HOST` of peers never fetched from; adds to peerPolicy.deny (repeatable, comma-separated)")
	fs.Var(&f.downloadRate, "download-rate", "`RATE` cap on the bytes/s of pieces this node receives, e.g. 100M (K, M, G; optional B or iB; 0: unlimited); sets rateLimit.download")
	fs.Var(&f.uploadRate, "upload-rate", "`RATE` cap on the bytes/s of pieces this node sends to other peers (0: unlimited); sets rateLimit.upload")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: dfdaemon [flags]\n       dfdaemon "+SetupContainerd+" --help\n\n"+
			"The Damselfly node daemon: a registry mirror and forward proxy whose blob\n"+
			"downloads go peer to peer, and the node's long-lived peer cache.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs
}

// Run runs dfdaemon with the command-line args until ctx is done. It
// returns nil after a clean shutdown, and an error for a bad command line or
// config before anything listens.
func Run(ctx context.Context, args []string, opts ...Option) error {
	o := runOptions{stdout: os.Stdout, stderr: os.Stderr, lookupEnv: os.LookupEnv}
	for _, opt := range opts {
		opt(&o)
	}
	if len(args) > 0 && args[0] == SetupContainerd {
		return runSetupContainerd(args[1:], o.stdout, o.stderr)
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
			case "peer-listen":
				cfg.PeerListen = f.peerListen
			case "advertise-ip":
				cfg.AdvertiseIP = f.advertiseIP
			case "node":
				cfg.Supernodes = nil
				for s := range strings.SplitSeq(f.supernodes, ",") {
					if s = strings.TrimSpace(s); s != "" {
						cfg.Supernodes = append(cfg.Supernodes, s)
					}
				}
			case "cluster-token-file":
				cfg.Cluster.FlagFile = f.clusterTokenFile
			case "registry":
				cfg.Mirror.Registry = f.registry
			case "data-dir":
				cfg.DataDir = f.dataDir
			case "peer-allow":
				cfg.PeerPolicy.Allow = append(cfg.PeerPolicy.Allow, f.peers.Allow...)
			case "peer-deny":
				cfg.PeerPolicy.Deny = append(cfg.PeerPolicy.Deny, f.peers.Deny...)
			case "download-rate":
				cfg.RateLimit.Download = f.downloadRate
			case "upload-rate":
				cfg.RateLimit.Upload = f.uploadRate
			}
		})
	})
}

// run wires and runs the components.
func run(ctx context.Context, cfg Config, o runOptions, logger *zap.Logger) error {
	if err := command.CheckDataDir(cfg.DataDir); err != nil {
		return err
	}
	keys, from, err := cfg.Cluster.Load(o.lookupEnv)
	if err != nil {
		return fmt.Errorf("%w: dfdaemon needs the supernode's cluster token (its <data-dir>/%s): set $%s, --cluster-token-file or clusterToken", err, clusterauth.FileName, clusterauth.EnvToken)
	}
	logger.Info("cluster token loaded", zap.String("from", from), zap.Bool("rotating", keys.Rotating()))
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	storeOpts := []local.Option{local.WithLogger(logger.Named("content"))}
	if !cfg.Cache.BufferedIO {
		storeOpts = append(storeOpts, local.WithDirectIO())
	}
	store, err := local.New(filepath.Join(cfg.DataDir, "content"), storeOpts...)
	if err != nil {
		return fmt.Errorf("content store: %w", err)
	}

	d := command.NewDaemon(logger)
	reg := d.Registry
	httpm := httpx.NewMetrics(reg, "damselfly")

	peerLn, err := net.Listen("tcp", cfg.PeerListen)
	if err != nil {
		return fmt.Errorf("peer listen: %w", err)
	}
	defer peerLn.Close()
	self := schedapi.Peer{
		ID:   peer.NewID("dfdaemon"),
		Addr: net.JoinHostPort(advertiseIP(cfg, logger), strconv.Itoa(peerLn.Addr().(*net.TCPAddr).Port)),
		// Told to the supernode, which sizes the CDN's fanout with it.
		DownloadRate: int64(cfg.RateLimit.Download),
	}
	logger = logger.With(zap.String("peer", self.ID))

	sc, err := schedclient.New(cfg.Supernodes, schedclient.WithLogger(logger.Named("schedclient")), schedclient.WithClusterKeys(keys))
	if err != nil {
		return fmt.Errorf("nodes: %w", err)
	}
	out, err := newOutbound(cfg)
	if err != nil {
		return err
	}
	src := httpsource.New(httpsource.WithHTTPClient(out.upstream), httpsource.WithLogger(logger.Named("source")))
	eng, err := peer.New(cfg.Peer, store, sc, self, append(out.engineOptions(peer.WithSource(src)),
		peer.WithLogger(logger.Named("peer")), peer.WithMetrics(reg),
		peer.WithDownloadLimiter(cfg.RateLimit.Download.Limiter()))...)
	if err != nil {
		return err
	}
	blobs, err := blobcache.New(cfg.Cache, store, eng,
		blobcache.WithLogger(logger.Named("cache")), blobcache.WithMetrics(reg))
	if err != nil {
		return err
	}

	upstreamHC := out.upstream
	rs := registrysource.New(registrysource.WithHTTPClient(upstreamHC), registrysource.WithLogger(logger.Named("registry")))
	manifests, err := manifestcache.New(cfg.ManifestCache, rs,
		manifestcache.WithLogger(logger.Named("manifests")), manifestcache.WithMetrics(reg))
	if err != nil {
		return err
	}
	mir, err := mirror.New(cfg.Mirror, blobs,
		mirror.WithManifests(manifests), mirror.WithHTTPClient(upstreamHC),
		mirror.WithLogger(logger.Named("mirror")), mirror.WithMetrics(reg))
	if err != nil {
		return err
	}
	fetcher := mirror.NewFetcher(blobs, mirror.NewAuthorizer(cfg.Mirror, out.proxy), cfg.Mirror.Registries())
	prxCfg := cfg.Proxy
	prxCfg.Outbound = cfg.Source.Merge(cfg.Proxy.Outbound)
	prx, err := proxy.New(prxCfg, fetcher, proxy.WithLogger(logger.Named("proxy")), proxy.WithMetrics(reg))
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()

	mux := d.Mux
	mirrorH := httpm.Instrument("mirror", mir, logger.Named("http"))
	mux.Handle("/v2/", mirrorH)
	mux.Handle("/v2", mirrorH)
	ready := newReadiness(sc.Supernodes())
	defer ready.hc.CloseIdleConnections()
	mux.Handle("GET /readyz", ready)
	proxyH := httpm.Instrument("proxy", prx, logger.Named("http"))
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if proxy.IsProxyRequest(r) {
			proxyH.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
	srv := d.Server(front)
	srv.MaxHeaderBytes = int(cfg.Proxy.MaxHeaderBytes)
	srv.RegisterOnShutdown(func() { _ = prx.Close() })

	logger.Info("dfdaemon listening",
		zap.String("addr", ln.Addr().String()), zap.String("peerAddr", peerLn.Addr().String()),
		zap.String("advertise", self.Addr), zap.Strings("supernodes", cfg.Supernodes),
		zap.String("registry", cfg.Mirror.Registry), zap.String("dataDir", cfg.DataDir),
		zap.String("quota", cfg.Cache.Quota.String()),
		zap.Stringer("downloadRate", cfg.RateLimit.Download), zap.Stringer("uploadRate", cfg.RateLimit.Upload),
		zap.String("version", version.Version()))
	if o.ready != nil {
		o.ready(ln.Addr(), peerLn.Addr())
	}

	up := upload.New(eng, keys, upload.WithLogger(logger.Named("upload")), upload.WithMetrics(httpm),
		upload.WithLimiter(cfg.RateLimit.Upload.Limiter()))
	err = d.Run(ctx, srv, ln,
		func(ctx context.Context) error { return up.Run(ctx, peerLn) },
		eng.Run, blobs.Run,
		func(ctx context.Context) error { ready.warnIfNone(ctx, logger); return nil })
	logger.Info("dfdaemon stopped")
	return err
}

// advertiseIP is the IP other peers reach this node at (peer.AdvertiseIP),
// 127.0.0.1 when the way to the supernode cannot be found.
func advertiseIP(cfg Config, logger *zap.Logger) string {
	ip, err := peer.AdvertiseIP(cfg.AdvertiseIP, cfg.PeerListen, cfg.Supernodes[0])
	if err != nil {
		logger.Warn("find the local address towards the supernode; advertising 127.0.0.1", zap.Error(err))
		return "127.0.0.1"
	}
	return ip
}
