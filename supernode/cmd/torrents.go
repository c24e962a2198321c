package cmd

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/supernode/bt"
	"github.com/damselfly/damselfly/supernode/cdn"
)

// newTorrents builds the CDN's BitTorrent client: every dial (peers,
// trackers, web seeds, torrent files) goes through dial and hc, the source
// policy's.
func newTorrents(cfg BTConfig, hc *http.Client, dial func(ctx context.Context, network, addr string) (net.Conn, error), logger *zap.Logger) (*bt.Client, error) {
	if hc.Transport == nil {
		c := *hc
		c.Transport = &http.Transport{DialContext: dial}
		hc = &c
	}
	c, err := bt.New(cfg.Config, bt.Options{Dial: dial, HTTPClient: hc, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("bittorrent client: %w", err)
	}
	return c, nil
}

// torrents adapts the BitTorrent client to the CDN.
type torrents struct{ c *bt.Client }

var _ cdn.TorrentClient = torrents{}

func (t torrents) OpenFile(ctx context.Context, link btlink.Link, file string) (cdn.TorrentFile, error) {
	tr, err := t.c.Open(ctx, link)
	if err != nil {
		return nil, err
	}
	f, err := tr.File(file)
	if err != nil {
		_ = tr.Close()
		return nil, err
	}
	return &torrentFile{t: tr, f: f}, nil
}

// torrentFile is one file of a torrent the CDN fetches.
type torrentFile struct {
	t *bt.Torrent
	f bt.File
}

func (tf *torrentFile) Size() int64  { return tf.f.Length }
func (tf *torrentFile) Close() error { return tf.t.Close() }
func (tf *torrentFile) Download(ctx context.Context, sink cdn.TorrentSink) error {
	return tf.t.Download(ctx, tf.f, sink)
}
