// Package bt is the supernode's BitTorrent client: it downloads one file of
// a torrent (a magnet link or a .torrent file by URL, as pkg/btlink parses
// them) as a single leeching client, and hands the bytes to a Sink only
// once the torrent's own piece hashes verified them. The CDN then spreads
// them with our own protocol.
//
// It is built on github.com/anacrolix/torrent, the only package of the
// module that imports it, with a storage of its own (storage.go): no piece
// data and no completion database is written to disk.
//
// Every outbound connection (peers, HTTP trackers, web seeds, .torrent
// files) goes through Options.Dial or Options.HTTPClient, which enforce the
// outbound policy. UDP trackers cannot, and are skipped. The DHT and
// WebTorrent, off by default, send UDP outside Options.Dial; see Config.
//
// Leech only by default: no listening socket, no uploads (anacrolix's
// NoUpload). With Config.Seed the client listens on Config.ListenAddr and
// serves verified pieces, read back from the Sink's io.ReaderAt.
package bt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/anacrolix/torrent"
	"github.com/anacrolix/torrent/metainfo"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/btlink"
)

// Errors of the client; wrapped with details.
var (
	// ErrMetadataTimeout: a magnet link's metadata did not arrive in time.
	ErrMetadataTimeout = errors.New("torrent metadata not received")
	// ErrTooLarge: the torrent's metadata or file count exceeds a cap.
	ErrTooLarge = errors.New("torrent exceeds a limit")
	// ErrNoEndpoints: the link names no trackers, web seeds or peers and
	// the DHT is off.
	ErrNoEndpoints = errors.New("no way to find peers")
	// ErrBusy: the torrent is already open in this client.
	ErrBusy = errors.New("torrent already open")
	// ErrStalled: a download verified nothing for Config.StallTimeout.
	ErrStalled = errors.New("torrent download stalled")
	// ErrNotFound: no such file in the torrent.
	ErrNotFound = errors.New("no such file in torrent")
)

// Options are the client's collaborators.
type Options struct {
	// Dial makes every outbound connection (peers; trackers and web seeds
	// through HTTPClient's transport, which must use it too). It enforces
	// the outbound policy. Required.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// HTTPClient fetches .torrent files, announces to HTTP trackers and
	// reads web seeds; its Transport must be set and dial with Dial.
	// Required.
	HTTPClient *http.Client
	// Logger defaults to zap.NewNop().
	Logger *zap.Logger
	// DataDir is unused: nothing is persisted (in-memory piece storage and
	// completion). Kept for a storage that would need it.
	DataDir string
}

// Client is a BitTorrent client. Torrents opened with it share its
// connections limits and rate limit.
type Client struct {
	cfg  Config
	opts Options
	log  *zap.Logger

	cl *torrent.Client // no DHT

	mu     sync.Mutex
	dhtCl  *torrent.Client // created on the first link that needs the DHT
	open   map[string]bool // info-hashes open
	closed bool

	lastDial atomic.Pointer[dialFailure]
}

// dialFailure is the last refused or failed outbound dial.
type dialFailure struct {
	addr string
	err  error
}

// New builds a client; cfg has its defaults applied and is validated here.
func New(cfg Config, opts Options) (*Client, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Dial == nil {
		return nil, errors.New("bt: Options.Dial is required")
	}
	if opts.HTTPClient == nil || opts.HTTPClient.Transport == nil {
		return nil, errors.New("bt: Options.HTTPClient with a Transport that dials with Options.Dial is required")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	c := &Client{cfg: cfg, opts: opts, log: opts.Logger.Named("bt"), open: map[string]bool{}}
	cl, err := c.newAnacrolix(false)
	if err != nil {
		return nil, err
	}
	c.cl = cl
	return c, nil
}

// newAnacrolix builds an anacrolix client for cfg, with or without DHT.
func (c *Client) newAnacrolix(dht bool) (*torrent.Client, error) {
	cfg := c.cfg
	tc := torrent.NewDefaultClientConfig()
	tc.Slogger = newSlogger(c.log.Named("anacrolix"))
	// Nothing persisted: every torrent brings its own pieceStore, and the
	// default one (which would be anacrolix's file storage) is never used.
	tc.DefaultStorage = newPieceStore(false)
	tc.Seed = cfg.Seed
	tc.NoUpload = !cfg.Seed
	tc.AcceptPeerConnections = cfg.Seed
	tc.DisableTCP = !cfg.Seed
	tc.DisableUTP = !cfg.Seed || !cfg.UTP
	if cfg.Seed {
		host, _, _ := net.SplitHostPort(cfg.ListenAddr)
		port, _ := listenPort(cfg.ListenAddr)
		tc.ListenHost = func(string) string { return host }
		tc.ListenPort = port
		// anacrolix listens on IPv4 and IPv6 with one host: an address
		// literal picks its family.
		if ip := net.ParseIP(host); ip != nil {
			tc.DisableIPv6 = ip.To4() != nil
			tc.DisableIPv4 = ip.To4() == nil
		}
	}
	tc.NoDHT = !dht
	if dht {
		// The DHT client is a second client: a port of its own (for its
		// DHT socket and, when seeding, its peers), never anacrolix's
		// default fixed port.
		tc.ListenPort = 0
	}
	tc.PeriodicallyAnnounceTorrentsToDht = dht && cfg.Seed
	tc.NoDefaultPortForwarding = true
	tc.DisableWebtorrent = !cfg.WebTorrent
	tc.DownloadRateLimiter = cfg.DownloadRate.Limiter()
	tc.MaxUnverifiedBytes = cfg.MaxUnverifiedBytes
	// Peers are dialed only by the dialer added below, never by the
	// listening sockets.
	tc.DialForPeerConns = false
	tc.TrackerDialContext = c.dial
	tc.TrackerListenPacket = func(network, addr string) (net.PacketConn, error) {
		return nil, errors.New("udp trackers are not used: they cannot go through the outbound policy")
	}
	tc.HTTPDialContext = c.dial
	tc.WebTransport = c.opts.HTTPClient.Transport
	tc.MetainfoSourcesClient = c.opts.HTTPClient
	cl, err := torrent.NewClient(tc)
	if err != nil {
		return nil, fmt.Errorf("bt: start client: %w", err)
	}
	cl.AddDialer(torrent.NetworkDialer{Network: "tcp", Dialer: dialFunc(c.dial)})
	return cl, nil
}

// dialFunc adapts a dial function to anacrolix's dialer.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

// dial is every outbound dial: Options.Dial, remembering the last failure
// so that a stalled download can say why.
func (c *Client) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.opts.Dial(ctx, network, addr)
	if err != nil {
		c.lastDial.Store(&dialFailure{addr: addr, err: err})
	}
	return conn, err
}

// dialHint describes the last failed dial and the peers banned for bad
// data, for error messages.
func (c *Client) dialHint(cl *torrent.Client) string {
	var s string
	if ips := cl.BadPeerIPs(); len(ips) > 0 {
		s += fmt.Sprintf("; peers banned for bad data: %s", strings.Join(ips[:min(len(ips), 5)], ", "))
	}
	if f := c.lastDial.Load(); f != nil {
		s += fmt.Sprintf("; last failed dial: %s: %v", f.addr, f.err)
	}
	return s
}

// ListenAddrs are the addresses the client accepts peers on: none unless
// Config.Seed (the DHT client, when there is one, listens apart).
func (c *Client) ListenAddrs() []net.Addr { return c.cl.ListenAddrs() }

// Close drops every torrent and stops the client.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	dhtCl := c.dhtCl
	c.mu.Unlock()
	var errs []error
	if dhtCl != nil {
		errs = append(errs, dhtCl.Close()...)
	}
	errs = append(errs, c.cl.Close()...)
	return errors.Join(errs...)
}

// client returns the anacrolix client for a torrent: the DHT one when the
// torrent names no endpoints.
func (c *Client) client(endpoints bool) (*torrent.Client, error) {
	if endpoints {
		return c.cl, nil
	}
	if !c.cfg.DHT {
		return nil, fmt.Errorf("the link names no trackers, web seeds or peers, and bt.dht is off: %w", ErrNoEndpoints)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dhtCl == nil {
		cl, err := c.newAnacrolix(true)
		if err != nil {
			return nil, err
		}
		c.dhtCl = cl
	}
	return c.dhtCl, nil
}

// Open adds the torrent of link and waits for its metadata, at most
// Config.MetadataTimeout. A magnet link's metadata comes from peers; a
// torrent+http(s) link's .torrent file is fetched with Options.HTTPClient,
// at most Config.MaxMetadataSize bytes. The caps on the metadata size and
// the file count are checked before Open returns. A torrent is open at
// most once per client at a time (ErrBusy).
func (c *Client) Open(ctx context.Context, link btlink.Link) (*Torrent, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.MetadataTimeout)
	defer cancel()
	spec, err := c.spec(ctx, link)
	if err != nil {
		return nil, err
	}
	ih := spec.InfoHash.HexString()
	endpoints := len(spec.Trackers) > 0 || len(spec.Webseeds) > 0 || len(spec.PeerAddrs) > 0
	cl, err := c.client(endpoints)
	if err != nil {
		return nil, fmt.Errorf("bt: torrent %s: %w", ih, err)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errors.New("bt: client closed")
	}
	if c.open[ih] {
		c.mu.Unlock()
		return nil, fmt.Errorf("bt: torrent %s: %w", ih, ErrBusy)
	}
	c.open[ih] = true
	c.mu.Unlock()

	store := newPieceStore(c.cfg.Seed)
	spec.Storage = store
	spec.DisallowDataUpload = !c.cfg.Seed
	// The link's peers are added apart: anacrolix trusts a spec's
	// PeerAddrs, and never bans a trusted peer that sends pieces failing
	// their hash, downloading them again and again.
	peers := spec.PeerAddrs
	spec.PeerAddrs = nil
	at, _, err := cl.AddTorrentSpec(spec)
	if err != nil {
		c.release(ih)
		return nil, fmt.Errorf("bt: add torrent %s: %w", ih, err)
	}
	if len(peers) > 0 {
		infos := make([]torrent.PeerInfo, len(peers))
		for i, p := range peers {
			infos[i] = torrent.PeerInfo{Addr: torrent.StringAddr(p), Source: torrent.PeerSourceDirect}
		}
		at.AddPeers(infos)
	}
	t := &Torrent{c: c, cl: cl, t: at, store: store, ih: ih}
	select {
	case <-at.GotInfo():
	case <-ctx.Done():
		st := at.Stats()
		t.Close()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("bt: torrent %s: no metadata within %s (%d peers known, %d connected%s): %w",
				ih, c.cfg.MetadataTimeout, st.TotalPeers, st.ActivePeers, c.dialHint(cl), ErrMetadataTimeout)
		}
		return nil, fmt.Errorf("bt: torrent %s: waiting for metadata: %w", ih, ctx.Err())
	}
	if err := t.index(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (c *Client) release(ih string) {
	c.mu.Lock()
	delete(c.open, ih)
	c.mu.Unlock()
}

// spec builds the anacrolix spec of link, fetching its .torrent file if it
// names one. UDP trackers are dropped.
func (c *Client) spec(ctx context.Context, link btlink.Link) (*torrent.TorrentSpec, error) {
	var spec *torrent.TorrentSpec
	if link.TorrentURL != "" {
		mi, err := c.fetchTorrent(ctx, link.TorrentURL)
		if err != nil {
			return nil, err
		}
		if spec, err = torrent.TorrentSpecFromMetaInfoErr(mi); err != nil {
			return nil, fmt.Errorf("bt: torrent file %s: %w", link.TorrentURL, err)
		}
	} else {
		if link.InfoHash == "" {
			return nil, errors.New("bt: magnet link without a v1 info-hash (btih): v2-only links are not supported")
		}
		var h metainfo.Hash
		if err := h.FromHexString(link.InfoHash); err != nil {
			return nil, fmt.Errorf("bt: info-hash %q: %w", link.InfoHash, err)
		}
		spec = &torrent.TorrentSpec{
			AddTorrentOpts: torrent.AddTorrentOpts{InfoHash: h},
			Trackers:       [][]string{link.Trackers},
			DisplayName:    link.Name,
			Webseeds:       link.WebSeeds,
			PeerAddrs:      link.Peers,
		}
	}
	var tiers [][]string
	for _, tier := range spec.Trackers {
		var kept []string
		for _, tr := range tier {
			if strings.HasPrefix(strings.ToLower(tr), "udp") {
				c.log.Info("skipping udp tracker: it cannot go through the outbound policy", zap.String("url", tr))
				continue
			}
			kept = append(kept, tr)
		}
		if len(kept) > 0 {
			tiers = append(tiers, kept)
		}
	}
	spec.Trackers = tiers
	spec.Sources = nil // "xs" sources would fetch from anywhere
	return spec, nil
}

// fetchTorrent fetches and parses a .torrent file, at most
// Config.MaxMetadataSize bytes.
func (c *Client) fetchTorrent(ctx context.Context, u string) (*metainfo.MetaInfo, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("bt: torrent file %s: %w", u, err)
	}
	resp, err := c.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("bt: fetch torrent file: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bt: fetch torrent file %s: status %s", u, resp.Status)
	}
	max := c.cfg.MaxMetadataSize
	if resp.ContentLength > max {
		return nil, fmt.Errorf("bt: torrent file %s of %d bytes, more than bt.maxMetadataSize %d: %w", u, resp.ContentLength, max, ErrTooLarge)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("bt: fetch torrent file %s: %w", u, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("bt: torrent file %s larger than bt.maxMetadataSize %d: %w", u, max, ErrTooLarge)
	}
	mi, err := metainfo.Load(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("bt: torrent file %s: %w", u, err)
	}
	return mi, nil
}
