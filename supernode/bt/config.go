package bt

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/damselfly/damselfly/pkg/ratelimit"
)

// Defaults of Config.
const (
	DefaultMaxMetadataSize = 16 << 20
	DefaultMaxFiles        = 10000
	DefaultMetadataTimeout = 2 * time.Minute
	DefaultStallTimeout    = 2 * time.Minute
	// DefaultMaxUnverifiedBytes bounds the piece data held in memory before
	// it is hashed (anacrolix's MaxUnverifiedBytes).
	DefaultMaxUnverifiedBytes = 64 << 20
	// hardMaxMetadataSize is anacrolix's own cap on an info dict fetched
	// from peers (BEP 9); MaxMetadataSize cannot exceed it.
	hardMaxMetadataSize = 16 << 20
)

// Config is the BitTorrent client's configuration. Every outbound
// connection goes through Options.Dial, except where a field says
// otherwise.
type Config struct {
	// Seed uploads to the swarm: the client listens on ListenAddr and serves
	// pieces it has verified. Off (the default), it uploads nothing, does
	// not listen, and only dials out.
	Seed bool `yaml:"seed"`
	// DHT allows the mainline DHT, for a link that names no trackers, web
	// seeds or peers (other links never use it). DHT traffic is UDP from a
	// socket of its own and does not go through Options.Dial. Default off.
	DHT bool `yaml:"dht"`
	// UTP accepts incoming uTP connections when seeding. With the build tag
	// disable_libutp (or without cgo) anacrolix uses its pure-Go uTP
	// (github.com/anacrolix/utp). Outgoing connections are always TCP, since
	// they go through Options.Dial. Default off.
	UTP bool `yaml:"utp"`
	// WebTorrent allows WebTorrent (WebRTC) peers; their data channels are
	// UDP and do not go through Options.Dial (websocket trackers do).
	// Default off.
	WebTorrent bool `yaml:"webTorrent"`
	// DownloadRate caps the client's download rate; 0 is unlimited.
	DownloadRate ratelimit.Rate `yaml:"downloadRate"`
	// MaxMetadataSize caps a torrent's info dict and a .torrent file, in
	// bytes (default and most 16 MiB, anacrolix's own cap on metadata
	// fetched from peers).
	MaxMetadataSize int64 `yaml:"maxMetadataSize"`
	// MaxFiles caps the files of a torrent (default 10000).
	MaxFiles int `yaml:"maxFiles"`
	// MetadataTimeout bounds the wait for a magnet link's metadata and the
	// fetch of a .torrent file (default 2m).
	MetadataTimeout time.Duration `yaml:"metadataTimeout"`
	// StallTimeout fails a download that verifies no piece for this long
	// (default 2m).
	StallTimeout time.Duration `yaml:"stallTimeout"`
	// MaxUnverifiedBytes bounds the piece data requested but not yet
	// verified, held in memory (default 64 MiB).
	MaxUnverifiedBytes int64 `yaml:"maxUnverifiedBytes"`
	// ListenAddr is the TCP (and with UTP, UDP) address for incoming peers
	// when seeding (default ":0", a free port announced to trackers). A
	// leech-only client does not listen, so setting it without Seed is an
	// error.
	ListenAddr string `yaml:"listen"`
}

// ApplyDefaults fills unset fields.
func (c Config) ApplyDefaults() Config {
	if c.MaxMetadataSize == 0 {
		c.MaxMetadataSize = DefaultMaxMetadataSize
	}
	if c.MaxFiles == 0 {
		c.MaxFiles = DefaultMaxFiles
	}
	if c.MetadataTimeout == 0 {
		c.MetadataTimeout = DefaultMetadataTimeout
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = DefaultStallTimeout
	}
	if c.MaxUnverifiedBytes == 0 {
		c.MaxUnverifiedBytes = DefaultMaxUnverifiedBytes
	}
	if c.Seed && c.ListenAddr == "" {
		c.ListenAddr = ":0"
	}
	return c
}

// Validate reports every problem of the config.
func (c Config) Validate() error {
	var errs []error
	if c.MaxMetadataSize <= 0 || c.MaxMetadataSize > hardMaxMetadataSize {
		errs = append(errs, fmt.Errorf("bt.maxMetadataSize %d: must be in (0, %d]", c.MaxMetadataSize, hardMaxMetadataSize))
	}
	if c.MaxFiles <= 0 {
		errs = append(errs, fmt.Errorf("bt.maxFiles %d: must be positive", c.MaxFiles))
	}
	if c.MetadataTimeout <= 0 {
		errs = append(errs, fmt.Errorf("bt.metadataTimeout %s: must be positive", c.MetadataTimeout))
	}
	if c.StallTimeout <= 0 {
		errs = append(errs, fmt.Errorf("bt.stallTimeout %s: must be positive", c.StallTimeout))
	}
	if c.MaxUnverifiedBytes <= 0 {
		errs = append(errs, fmt.Errorf("bt.maxUnverifiedBytes %d: must be positive", c.MaxUnverifiedBytes))
	}
	if c.DownloadRate < 0 {
		errs = append(errs, fmt.Errorf("bt.downloadRate %d: is negative (0 means unlimited)", int64(c.DownloadRate)))
	}
	if c.ListenAddr != "" {
		if !c.Seed {
			errs = append(errs, fmt.Errorf("bt.listen %q: needs bt.seed (a leech-only client does not listen)", c.ListenAddr))
		} else if _, err := listenPort(c.ListenAddr); err != nil {
			errs = append(errs, fmt.Errorf("bt.listen %q: %w", c.ListenAddr, err))
		}
	}
	return errors.Join(errs...)
}

// listenPort splits addr into its port (the host is checked separately).
func listenPort(addr string) (int, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return 0, err
	}
	return p, nil
}
