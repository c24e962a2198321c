package cmd

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/command"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/dfdaemon/proxy"
	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/ratelimit"
)

// Defaults of the top-level keys.
const (
	DefaultListen     = "127.0.0.1:65001"
	DefaultPeerListen = ":65002"
	DefaultSupernode  = "127.0.0.1:8002"
	DefaultDataDir    = ".damselfly/dfdaemon"
)

// DefaultProxyRules are the forward proxy's rules when the config sets none
// (an explicit empty list means none): registry blob downloads by sha256
// digest go through the P2P network, everything else is forwarded.
func DefaultProxyRules() []proxy.Rule {
	return []proxy.Rule{{Regex: `^https?://[^/]+/v2/.+/blobs/sha256:[a-f0-9]{64}$`, UseP2P: true}}
}

// Config is dfdaemon's configuration: a YAML file (--config), with
// command-line flags taking precedence. It composes the configs of the
// packages it wires. docs/dfdaemon.yaml is the annotated default.
type Config struct {
	// Listen is the address of the runtime-facing listener: the registry
	// mirror (/v2/...), the forward proxy (absolute-form requests and
	// CONNECT), /healthz and /metrics. Loopback by default: the runtimes
	// are on the node, and the listener serves whoever reaches it.
	Listen string `yaml:"listen"`
	// PeerListen is the address of the upload server other peers fetch
	// this node's pieces from.
	PeerListen string `yaml:"peerListen"`
	// AdvertiseIP is the IP other peers reach this node at. Empty: the
	// host of PeerListen when it names one, else the local address towards
	// the first supernode.
	AdvertiseIP string `yaml:"advertiseIP"`
	// Supernodes are the supernodes' host:port; a task goes to one of them
	// by rendezvous hash of its ID. The key is "nodes" (and the flag
	// --node), as in Dragonfly; "node" elsewhere means a machine.
	Supernodes []string `yaml:"nodes"`
	// Cluster gives the cluster token this node presents to the supernodes
	// and to other peers, and requires from peers fetching its pieces:
	// clusterToken ("token" or "new,old" while rotating) or
	// clusterTokenFile. $DAMSELFLY_CLUSTER_TOKEN and --cluster-token-file
	// win over both. Required.
	Cluster clusterauth.Config `yaml:",inline"`
	// Source says which addresses registries and sources may be reached
	// at: the mirror's upstream requests, token realms, the peer engine's
	// source fallback and (with proxy.outbound added) the forward proxy.
	// Loopback, link-local, unspecified and multicast addresses are denied
	// unless Allow covers them (pkg/netpolicy; docs/SECURITY.md).
	Source netpolicy.Config `yaml:"source"`
	// PeerPolicy says which addresses pieces may be fetched from: other
	// peers and the supernodes' CDN, as handed out by the scheduler. The
	// same built-in deny list applies; it is separate from Source so that
	// peers on private networks need not open those networks to sources.
	PeerPolicy netpolicy.Config `yaml:"peerPolicy"`
	// DataDir holds the node's content store (content/).
	DataDir string `yaml:"dataDir"`
	// Mirror configures the registry mirror: the default upstream, the
	// upstreams ?ns= may name, how long a client's access is trusted.
	Mirror mirror.Config `yaml:"mirror"`
	// ManifestCache tunes the in-process manifest cache (pkg/manifestcache,
	// the library the registry-cache binary also serves).
	ManifestCache manifestcache.Config `yaml:"manifestCache"`
	// Proxy configures the forward proxy: rules, HTTPS interception,
	// outbound policy.
	Proxy proxy.Config `yaml:"proxy"`
	// Cache bounds the node's content store and how long it seeds.
	Cache blobcache.Config `yaml:"cache"`
	// Peer tunes the peer engine.
	Peer peer.Config `yaml:"peer"`
	// RateLimit caps the node's piece traffic.
	RateLimit RateLimitConfig `yaml:"rateLimit"`
	// Log sets the log level and format.
	Log log.Config `yaml:"log"`
}

// ApplyDefaults fills unset fields.
func (c Config) ApplyDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.PeerListen == "" {
		c.PeerListen = DefaultPeerListen
	}
	if len(c.Supernodes) == 0 {
		c.Supernodes = []string{DefaultSupernode}
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Proxy.Rules == nil {
		c.Proxy.Rules = DefaultProxyRules()
	}
	c.Mirror = c.Mirror.ApplyDefaults()
	c.ManifestCache = c.ManifestCache.ApplyDefaults()
	c.Proxy = c.Proxy.ApplyDefaults()
	c.Cache = c.Cache.ApplyDefaults()
	c.Peer = c.Peer.ApplyDefaults()
	c.Log = c.Log.ApplyDefaults()
	return c
}

// Validate reports every problem of the config, each naming its key.
func (c Config) Validate() error {
	var errs []error
	if err := command.CheckHostPort(c.Listen, true); err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	if err := command.CheckHostPort(c.PeerListen, true); err != nil {
		errs = append(errs, fmt.Errorf("peerListen: %w", err))
	}
	if c.AdvertiseIP != "" {
		if ip, err := netip.ParseAddr(c.AdvertiseIP); err != nil || ip.IsUnspecified() {
			errs = append(errs, fmt.Errorf("advertiseIP %q: want an IP address peers can reach", c.AdvertiseIP))
		}
	}
	if len(c.Supernodes) == 0 {
		errs = append(errs, errors.New("nodes: at least one supernode is required"))
	}
	for i, n := range c.Supernodes {
		if err := command.CheckHostPort(n, false); err != nil {
			errs = append(errs, fmt.Errorf("nodes[%d]: %w", i, err))
		}
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("dataDir: must be set"))
	}
	for _, err := range []error{
		c.Source.Validate("source"),
		c.PeerPolicy.Validate("peerPolicy"),
		c.Mirror.Validate(),
		command.Section("manifestCache", c.ManifestCache.Validate()),
		c.Proxy.Validate(),
		c.Cache.Validate(),
		command.Section("peer", c.Peer.Validate()),
		c.RateLimit.Validate(),
		c.Log.Validate(),
	} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RateLimitConfig caps the bytes per second of the node's piece traffic,
// like a network link of that speed would. 0 means unlimited.
type RateLimitConfig struct {
	// Download caps what the peer engine receives: pieces from other peers
	// and the supernodes' CDN, and the source fallback.
	Download ratelimit.Rate `yaml:"download"`
	// Upload caps what the upload server sends to other peers.
	Upload ratelimit.Rate `yaml:"upload"`
}

// Validate reports a negative rate.
func (c RateLimitConfig) Validate() error {
	var errs []error
	if c.Download < 0 {
		errs = append(errs, fmt.Errorf("rateLimit.download: %d is negative (0 means unlimited)", c.Download))
	}
	if c.Upload < 0 {
		errs = append(errs, fmt.Errorf("rateLimit.upload: %d is negative (0 means unlimited)", c.Upload))
	}
	return errors.Join(errs...)
}
