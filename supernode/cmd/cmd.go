// Package cmd is the supernode command: it parses flags, loads and
// validates the configuration, wires the scheduler, the CDN, the preheater,
// the peer API, the CDN's upload server and the admin API onto one HTTP
// listener, and runs them until its context ends.
//
// Run has no global state (no flag.CommandLine, no global prometheus
// registry, no global logger), so tests run many supernodes in one process.
package cmd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/pkg/version"
	"github.com/damselfly/damselfly/supernode/adminapi"
	"github.com/damselfly/damselfly/supernode/peerapi"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/task"
)

// EnvAdminToken is the environment variable holding the admin API token.
const EnvAdminToken = "DAMSELFLY_ADMIN_TOKEN"

// CDNPeerID is the peer ID under which the supernode's CDN appears in piece
// assignments.
const CDNPeerID = "supernode"

// Option configures Run.
type Option func(*runOptions)

type runOptions struct {
	log       *zap.Logger
	ready     func(net.Addr)
	sourceHC  *http.Client
	stdout    io.Writer
	stderr    io.Writer
	lookupEnv func(string) (string, bool)
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

// WithSourceClient makes the CDN fetch sources with hc instead of the
// client built from the source policy (which denies loopback addresses).
// It is a test seam.
func WithSourceClient(hc *http.Client) Option {
	return func(o *runOptions) { o.sourceHC = hc }
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
	config, listen, dataDir, advertise, adminToken string
	clusterTokenFile                               string
	insecureRegistries                             []string
	common                                         command.CommonFlags
	uploadRate                                     ratelimit.Rate
	cdnQuota                                       bytesize.Size
	version                                        bool
}

func newFlagSet(f *flags, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("supernode", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&f.config, "config", "", "YAML config `file` (see docs/supernode.yaml); flags override it")
	fs.StringVar(&f.listen, "listen", "", "`host:port` of the HTTP listener (default "+DefaultListen+")")
	fs.StringVar(&f.dataDir, "data-dir", "", "`dir` for content, piece metadata and the generated admin token (default "+DefaultDataDir+")")
	fs.StringVar(&f.advertise, "advertise-addr", "", "`host:port` peers use to reach this supernode's CDN (default: the listen address, unspecified host replaced by the first non-loopback IPv4)")
	fs.StringVar(&f.adminToken, "admin-token", "", "admin API bearer `token` (prefer $"+EnvAdminToken+"; default: generated into <data-dir>/admin-token)")
	fs.StringVar(&f.clusterTokenFile, "cluster-token-file", "", "`file` holding the cluster token members present (\"token\" or \"new,old\"; or $"+clusterauth.EnvToken+"; default: generated into <data-dir>/"+clusterauth.FileName+")")
	f.common.Register(fs, "sources")
	fs.Var(command.ListFlag{List: &f.insecureRegistries}, "preheat-insecure-registry", "`HOST[:PORT]` of a registry preheats speak plain http to; adds to preheat.insecureRegistries (repeatable, comma-separated)")
	fs.Var(&f.uploadRate, "upload-rate", "`RATE` cap on the bytes/s the CDN sends to peers, e.g. 1G or 500M (0: unlimited); sets cdn.uploadRate")
	fs.Var(&f.cdnQuota, "cdn-quota", "`SIZE` of committed content the CDN keeps, e.g. 100G or 64GiB; past it the least recently used content not in use is evicted (0: no quota, the disk watermarks alone); sets cdn.quota")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: supernode [flags]\n\nThe Damselfly supernode: CDN seed, piece scheduler, peer API and admin API on one listener.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs
}

// Run runs the supernode with the command-line args until ctx is done. It
// returns nil after a clean shutdown, and an error for a bad command line or
// config before anything listens.
func Run(ctx context.Context, args []string, opts ...Option) error {
	o := runOptions{stdout: os.Stdout, stderr: os.Stderr, lookupEnv: os.LookupEnv}
	for _, opt := range opts {
		opt(&o)
	}
	var f flags
	fset := newFlagSet(&f, o.stdout)
	if done, err := command.ParseArgs(fset, args); done || err != nil {
		return err
	}
	cfg, err := buildConfig(fset, &f, o.lookupEnv)
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

// buildConfig layers defaults, the config file, the environment and the
// flags, then validates the result.
func buildConfig(fset *flag.FlagSet, f *flags, lookupEnv func(string) (string, bool)) (Config, error) {
	return command.Load(f.config, func(cfg *Config) {
		if v, ok := lookupEnv(EnvAdminToken); ok && v != "" {
			cfg.AdminToken = v
		}
		fset.Visit(func(fl *flag.Flag) {
			if f.common.Apply(fl.Name, &cfg.Log, &cfg.Source) {
				return
			}
			switch fl.Name {
			case "listen":
				cfg.Listen = f.listen
			case "data-dir":
				cfg.DataDir = f.dataDir
			case "advertise-addr":
				cfg.AdvertiseAddr = f.advertise
			case "admin-token":
				cfg.AdminToken = f.adminToken
			case "cluster-token-file":
				cfg.Cluster.FlagFile = f.clusterTokenFile
			case "preheat-insecure-registry":
				cfg.Preheat.InsecureRegistries = append(cfg.Preheat.InsecureRegistries, f.insecureRegistries...)
			case "upload-rate":
				cfg.CDN.UploadRate = f.uploadRate
			case "cdn-quota":
				cfg.CDN.Quota = f.cdnQuota
			}
		})
	})
}

// run wires and runs the components.
func run(ctx context.Context, cfg Config, o runOptions, logger *zap.Logger) error {
	if err := command.CheckDataDir(cfg.DataDir); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	token, err := adminToken(cfg, logger)
	if err != nil {
		return err
	}
	keys, err := clusterKeys(cfg, o.lookupEnv, logger)
	if err != nil {
		return err
	}
	// The CDN's store stays on the page cache (unlike dfdaemon's): a new
	// piece is served to many peers at once right after it is stored, and
	// from the page cache every transfer starts at once (docs/benchmarks.md).
	store, err := local.New(filepath.Join(cfg.DataDir, "content"), local.WithLogger(logger.Named("content")), local.WithDirectWrites())
	if err != nil {
		return fmt.Errorf("content store: %w", err)
	}
	// Every outbound connection of the CDN (sources, and the BitTorrent
	// client's peers, trackers and web seeds) is held to the source
	// policy; a test's own source client brings its own dialing.
	sourceHC, sourceDial := o.sourceHC, (&net.Dialer{}).DialContext
	if sourceHC == nil {
		p, err := sourcePolicy(cfg.Source)
		if err != nil {
			return fmt.Errorf("source policy: %w", err)
		}
		sourceHC, sourceDial = sourceHTTPClient(p), p.DialContext(nil)
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	advertise := cfg.AdvertiseAddr
	if advertise == "" {
		advertise = advertiseFrom(ln.Addr())
	}

	d := command.NewDaemon(logger)
	reg := d.Registry
	// One owner for the supernode's tasks: the scheduler and the CDN,
	// wired to each other. The CDN's upload server reports the transfers
	// it starts (upload.WithTransferStart below), so CDN assignments not
	// started in time are revoked.
	src := httpsource.New(httpsource.WithHTTPClient(sourceHC), httpsource.WithLogger(logger.Named("source")))
	taskOpts := []task.Option{task.WithLogger(logger), task.WithMetrics(reg)}
	if cfg.CDN.BT.On() {
		btc, err := newTorrents(cfg.CDN.BT, sourceHC, sourceDial, logger.Named("bt"))
		if err != nil {
			return err
		}
		defer btc.Close()
		taskOpts = append(taskOpts, task.WithTorrents(torrents{btc}))
	}
	tasks, err := task.New(task.Config{Scheduler: cfg.Scheduler, CDN: cfg.CDN.Config},
		schedapi.Peer{ID: CDNPeerID, Addr: advertise}, store, src, taskOpts...)
	if err != nil {
		return err
	}
	sched := tasks.Scheduler()
	httpm := httpx.NewMetrics(reg, "damselfly")
	// Preheats resolve images through the same policy-checked client the
	// CDN fetches with.
	resolver := registrysource.New(registrysource.WithHTTPClient(sourceHC),
		registrysource.WithInsecureRegistries(cfg.Preheat.InsecureRegistries),
		registrysource.WithLogger(logger.Named("registry")))
	heater := preheat.New(cfg.Preheat, resolver, tasks,
		preheat.WithLogger(logger.Named("preheat")))

	mux := d.Mux
	mux.Handle("/api/peer/", peerapi.New(tasks, sched, keys, peerapi.WithLimits(cfg.PeerAPI),
		peerapi.WithLogger(logger.Named("peerapi")), peerapi.WithHTTPMetrics(httpm)).Handler())
	mux.Handle("/upload/", upload.New(tasks, keys,
		upload.WithLogger(logger.Named("upload")), upload.WithMetrics(httpm),
		upload.WithLimiter(cfg.CDN.UploadRate.Limiter()),
		upload.WithTransferStart(tasks.TransferStarted)).Handler())
	admin := adminapi.New(sched, tasks, token,
		adminapi.WithLogger(logger.Named("adminapi")), adminapi.WithHTTPMetrics(httpm),
		adminapi.WithPreheater(heater), adminapi.WithDashboard(tasks))
	mux.Handle("/api/v1/", admin)
	mux.Handle("/dashboard/", admin) // the operator dashboard (log in with the admin token)
	srv := d.Server(nil)
	logger.Info("supernode listening",
		zap.String("addr", ln.Addr().String()), zap.String("advertise", advertise),
		zap.String("dataDir", cfg.DataDir), zap.Stringer("uploadRate", cfg.CDN.UploadRate),
		zap.Stringer("cdnQuota", cfg.CDN.Quota),
		zap.String("version", version.Version()))
	if o.ready != nil {
		o.ready(ln.Addr())
	}

	err = d.Run(ctx, srv, ln, tasks.Run, heater.Run)
	logger.Info("supernode stopped")
	return err
}

// advertiseFrom derives the address peers reach the CDN at from the bound
// listener: an unspecified host becomes the first non-loopback IPv4 address
// of the machine, or 127.0.0.1.
func advertiseFrom(bound net.Addr) string {
	host, port, err := net.SplitHostPort(bound.String())
	if err != nil {
		return bound.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = firstIPv4()
	}
	return net.JoinHostPort(host, port)
}

func firstIPv4() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip4 := n.IP.To4(); ip4 != nil && !ip4.IsLoopback() && !ip4.IsLinkLocalUnicast() {
					return ip4.String()
				}
			}
		}
	}
	return "127.0.0.1"
}

// adminTokenFile is the name of the generated token under the data dir.
const adminTokenFile = "admin-token"

// adminToken returns the configured token, or the one kept in the data dir,
// generating it on first start. The token itself is never logged.
func adminToken(cfg Config, logger *zap.Logger) (string, error) {
	if cfg.AdminToken != "" {
		return cfg.AdminToken, nil
	}
	path := filepath.Join(cfg.DataDir, adminTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		if tok := strings.TrimSpace(string(b)); tok != "" {
			if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
				logger.Warn("admin token file is readable by others", zap.String("path", path))
			}
			logger.Info("admin token read from file", zap.String("path", path))
			return tok, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("admin token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	tok := hex.EncodeToString(raw[:])
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	logger.Info("admin token generated", zap.String("path", path))
	return tok, nil
}

// clusterKeys returns the configured cluster token(s), or the one kept in
// the data dir, generating it on first start. Tokens are never logged.
func clusterKeys(cfg Config, lookupEnv func(string) (string, bool), logger *zap.Logger) (clusterauth.Keys, error) {
	keys, from, err := cfg.Cluster.Load(lookupEnv)
	if errors.Is(err, clusterauth.ErrNoToken) {
		path := filepath.Join(cfg.DataDir, clusterauth.FileName)
		var generated bool
		keys, generated, err = clusterauth.LoadOrGenerate(path)
		from = path
		if generated {
			logger.Info("cluster token generated: give it to every dfdaemon and dfget ($"+clusterauth.EnvToken+" or --cluster-token-file)", zap.String("path", path))
		}
	}
	if err != nil {
		return clusterauth.Keys{}, err
	}
	if keys.Weak() {
		logger.Warn("cluster token is short: use at least 16 random characters", zap.String("from", from))
	}
	logger.Info("cluster token loaded", zap.String("from", from), zap.Bool("rotating", keys.Rotating()))
	return keys, nil
}
