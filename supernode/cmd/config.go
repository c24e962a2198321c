package cmd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/command"

	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/supernode/bt"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/peerapi"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// Defaults of the top-level keys.
const (
	DefaultListen  = ":8002"
	DefaultDataDir = ".damselfly/supernode"
)

// Config is the supernode's configuration: a YAML file (--config), with
// command-line flags taking precedence. It composes the configs of the
// packages it wires. docs/supernode.yaml is the annotated default.
type Config struct {
	// Listen is the address of the supernode's one HTTP listener: the peer
	// API, the CDN's piece uploads, the admin API, /healthz and /metrics.
	Listen string `yaml:"listen"`
	// AdvertiseAddr is the host:port peers use to reach this supernode's
	// CDN. Empty: the listen address, with an unspecified host replaced by
	// the machine's first non-loopback IPv4 address (127.0.0.1 if none).
	AdvertiseAddr string `yaml:"advertiseAddr"`
	// DataDir holds the content store (content/), the CDN's piece metadata
	// (cdn/) and a generated admin token (admin-token). Relative paths are
	// relative to the working directory.
	DataDir string `yaml:"dataDir"`
	// AdminToken is the bearer token of the admin API. Prefer the
	// DAMSELFLY_ADMIN_TOKEN environment variable. Empty everywhere: a
	// random token is generated once and kept in <dataDir>/admin-token.
	AdminToken string `yaml:"adminToken"`
	// Cluster gives the cluster token every member presents on the peer API
	// and upload servers: clusterToken ("token" or "new,old" while rotating)
	// or clusterTokenFile. $DAMSELFLY_CLUSTER_TOKEN and --cluster-token-file
	// win over both. None given: a random token is generated once and kept
	// in <dataDir>/cluster-token (mode 0600).
	Cluster clusterauth.Config `yaml:",inline"`
	// Source says which addresses the CDN may fetch from (sources,
	// preheat's registries and token realms). The resolved IP of every
	// connection, including each redirect hop, is checked when it is
	// dialled. Loopback, link-local (cloud metadata services), unspecified
	// and multicast addresses are denied unless Allow covers them; Deny
	// adds networks. Entries are CIDRs, IPs or host names (see
	// pkg/netpolicy). Proxy environment variables are ignored.
	Source netpolicy.Config `yaml:"source"`
	// PeerAPI bounds the register and poll requests of one client address.
	PeerAPI peerapi.Config `yaml:"peerAPI"`
	// Scheduler tunes piece scheduling.
	Scheduler scheduler.Config `yaml:"scheduler"`
	// CDN tunes source fetches, and its BitTorrent client (cdn.bt).
	CDN CDNConfig `yaml:"cdn"`
	// Preheat holds registry credentials and insecure registries for
	// preheats (POST /api/v1/preheats).
	Preheat preheat.Config `yaml:"preheat"`
	// Log sets the log level and format.
	Log log.Config `yaml:"log"`
}

// ApplyDefaults fills unset fields.
func (c Config) ApplyDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	c.PeerAPI = c.PeerAPI.ApplyDefaults()
	c.Scheduler = c.Scheduler.ApplyDefaults()
	c.Scheduler.CDNUploadRate = int64(c.CDN.UploadRate)
	c.CDN.Dir = filepath.Join(c.DataDir, "cdn")
	c.CDN.Config = c.CDN.Config.ApplyDefaults()
	c.CDN.BT = c.CDN.BT.ApplyDefaults()
	c.Preheat = c.Preheat.ApplyDefaults()
	c.Log = c.Log.ApplyDefaults()
	return c
}

// Validate reports every problem of the config, each naming its key.
func (c Config) Validate() error {
	var errs []error
	if err := command.CheckHostPort(c.Listen, true); err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	if c.AdvertiseAddr != "" {
		if err := command.CheckHostPort(c.AdvertiseAddr, false); err != nil {
			errs = append(errs, fmt.Errorf("advertiseAddr: %w", err))
		} else if host, _, _ := net.SplitHostPort(c.AdvertiseAddr); host == "" || isUnspecified(host) {
			errs = append(errs, fmt.Errorf("advertiseAddr %q: needs a host peers can reach", c.AdvertiseAddr))
		}
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("dataDir: must be set"))
	}
	if err := c.Source.Validate("source"); err != nil {
		errs = append(errs, err)
	}
	if err := c.PeerAPI.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Scheduler.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.CDN.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.CDN.BT.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("cdn.bt: %w", err))
	}
	if err := c.Preheat.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func isUnspecified(host string) bool {
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// CDNConfig is the cdn block: the CDN's settings, and under bt those of the
// BitTorrent client that fetches magnet and torrent+http(s) sources.
type CDNConfig struct {
	cdn.Config `yaml:",inline"`
	BT         BTConfig `yaml:"bt"`
}

// BTConfig is the cdn.bt block.
type BTConfig struct {
	// Enabled runs the BitTorrent client (default true). Off, torrent
	// sources fail with an error saying so.
	Enabled *bool `yaml:"enabled"`
	// The client's settings: seeding, DHT, uTP and WebTorrent are off by
	// default (see supernode/bt).
	bt.Config `yaml:",inline"`
}

// ApplyDefaults fills unset fields.
func (c BTConfig) ApplyDefaults() BTConfig {
	if c.Enabled == nil {
		on := true
		c.Enabled = &on
	}
	c.Config = c.Config.ApplyDefaults()
	return c
}

// On reports whether the BitTorrent client runs.
func (c BTConfig) On() bool { return c.Enabled == nil || *c.Enabled }
