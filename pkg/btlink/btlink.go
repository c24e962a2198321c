// Package btlink parses the BitTorrent sources a download may name: magnet
// links (BEP 9: "magnet:?xt=urn:btih:<info-hash>&dn=…&tr=…&ws=…&x.pe=…",
// the info-hash as 40 hex or 32 base32 characters; BitTorrent v2 "btmh"
// links with a sha2-256 multihash) and torrent files by URL
// ("torrent+https://host/file.torrent", "torrent+http://…"). It holds no
// client: the supernode's CDN fetches torrents (supernode/cdn), and every
// other part only names and routes them.
package btlink

import (
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// ErrInvalid: the link is not a BitTorrent source this package reads.
var ErrInvalid = errors.New("invalid bittorrent link")

// Limits of a parsed magnet link.
const (
	// MaxLinkLen bounds a link's length.
	MaxLinkLen = 8 << 10
	// MaxEndpoints bounds the trackers, web seeds and peers a link lists.
	MaxEndpoints = 64
)

// Prefixes of torrent-file URLs.
const (
	prefixHTTPS = "torrent+https://"
	prefixHTTP  = "torrent+http://"
)

// Link is a parsed BitTorrent source.
type Link struct {
	// InfoHash is the v1 info-hash, 40 lowercase hex characters; empty for
	// a v2-only magnet link or a torrent file not fetched yet.
	InfoHash string
	// InfoHashV2 is the v2 info-hash (sha2-256), 64 lowercase hex
	// characters, when the link names one.
	InfoHashV2 string
	// Name is the display name (dn), if any.
	Name string
	// Trackers (tr), WebSeeds (ws, BEP 19) and Peers (x.pe, host:port) the
	// link lists.
	Trackers []string
	WebSeeds []string
	Peers    []string
	// TorrentURL is the http(s) URL of a torrent file (torrent+http(s)
	// links); empty for a magnet link.
	TorrentURL string
}

// IsLink reports whether raw looks like a BitTorrent source (by its scheme
// alone): magnet:, torrent+http:, torrent+https:.
func IsLink(raw string) bool {
	l := strings.ToLower(raw)
	return strings.HasPrefix(l, "magnet:") || strings.HasPrefix(l, prefixHTTP) || strings.HasPrefix(l, prefixHTTPS)
}

// Parse parses a magnet link or a torrent+http(s) URL.
func Parse(raw string) (Link, error) {
	if len(raw) > MaxLinkLen {
		return Link{}, fmt.Errorf("link of %d bytes, more than %d: %w", len(raw), MaxLinkLen, ErrInvalid)
	}
	lower := strings.ToLower(raw)
	switch {
	case strings.HasPrefix(lower, prefixHTTP), strings.HasPrefix(lower, prefixHTTPS):
		inner := raw[len("torrent+"):]
		u, err := url.Parse(inner)
		if err != nil || u.Host == "" || (strings.ToLower(u.Scheme) != "http" && strings.ToLower(u.Scheme) != "https") {
			return Link{}, fmt.Errorf("torrent file url %q: %w", inner, ErrInvalid)
		}
		return Link{TorrentURL: inner}, nil
	case strings.HasPrefix(lower, "magnet:"):
		return parseMagnet(raw)
	}
	return Link{}, fmt.Errorf("%q: not a magnet link or a torrent+http(s) url: %w", truncate(raw), ErrInvalid)
}

func parseMagnet(raw string) (Link, error) {
	u, err := url.Parse(raw)
	if err != nil || !strings.EqualFold(u.Scheme, "magnet") {
		return Link{}, fmt.Errorf("magnet link: %w", ErrInvalid)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Link{}, fmt.Errorf("magnet link query: %v: %w", err, ErrInvalid)
	}
	var l Link
	for _, xt := range q["xt"] {
		switch lx := strings.ToLower(xt); {
		case strings.HasPrefix(lx, "urn:btih:"):
			h, err := infoHashV1(xt[len("urn:btih:"):])
			if err != nil {
				return Link{}, err
			}
			if l.InfoHash != "" && l.InfoHash != h {
				return Link{}, fmt.Errorf("magnet link names two v1 info-hashes: %w", ErrInvalid)
			}
			l.InfoHash = h
		case strings.HasPrefix(lx, "urn:btmh:"):
			h, err := infoHashV2(lx[len("urn:btmh:"):])
			if err != nil {
				return Link{}, err
			}
			l.InfoHashV2 = h
		}
	}
	if l.InfoHash == "" && l.InfoHashV2 == "" {
		return Link{}, fmt.Errorf("magnet link without an xt=urn:btih: or urn:btmh: info-hash: %w", ErrInvalid)
	}
	l.Name = q.Get("dn")
	if l.Trackers, err = endpoints(q["tr"], "tracker"); err != nil {
		return Link{}, err
	}
	if l.WebSeeds, err = endpoints(q["ws"], "web seed"); err != nil {
		return Link{}, err
	}
	for _, p := range q["x.pe"] {
		host, port, err := net.SplitHostPort(p)
		if err != nil || host == "" || port == "" {
			return Link{}, fmt.Errorf("magnet peer %q: must be host:port: %w", truncate(p), ErrInvalid)
		}
		l.Peers = append(l.Peers, p)
	}
	if len(l.Trackers)+len(l.WebSeeds)+len(l.Peers) > MaxEndpoints {
		return Link{}, fmt.Errorf("magnet link lists more than %d trackers, web seeds and peers: %w", MaxEndpoints, ErrInvalid)
	}
	return l, nil
}

// endpoints checks tracker or web seed URLs: absolute, with a host.
func endpoints(vs []string, what string) ([]string, error) {
	var out []string
	for _, v := range vs {
		u, err := url.Parse(v)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("magnet %s %q: not an absolute url: %w", what, truncate(v), ErrInvalid)
		}
		out = append(out, v)
	}
	return out, nil
}

// infoHashV1 reads a v1 info-hash: 40 hex or 32 base32 characters.
func infoHashV1(s string) (string, error) {
	switch len(s) {
	case 40:
		b, err := hex.DecodeString(s)
		if err == nil {
			return hex.EncodeToString(b), nil
		}
	case 32:
		b, err := base32.StdEncoding.DecodeString(strings.ToUpper(s))
		if err == nil && len(b) == 20 {
			return hex.EncodeToString(b), nil
		}
	}
	return "", fmt.Errorf("info-hash %q: must be 40 hex or 32 base32 characters: %w", truncate(s), ErrInvalid)
}

// infoHashV2 reads a v2 multihash: sha2-256 (0x12), 32 bytes (0x20), hex.
func infoHashV2(s string) (string, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 34 || b[0] != 0x12 || b[1] != 0x20 {
		return "", fmt.Errorf("btmh %q: must be a hex sha2-256 multihash (1220…): %w", truncate(s), ErrInvalid)
	}
	return hex.EncodeToString(b[2:]), nil
}

// Canonical is what names the content of a link, for task IDs: a magnet
// link's info-hash ("magnet:?xt=urn:btih:<hex>", or urn:btmh for v2 only),
// whatever trackers, peers or name it lists; a torrent file's URL
// ("torrent+" and its http(s) URL as given, which the caller normalises).
func (l Link) Canonical() string {
	switch {
	case l.TorrentURL != "":
		return "torrent+" + l.TorrentURL
	case l.InfoHash != "":
		return "magnet:?xt=urn:btih:" + l.InfoHash
	default:
		return "magnet:?xt=urn:btmh:1220" + l.InfoHashV2
	}
}

// HasEndpoints reports whether the link names somewhere to find the
// torrent (trackers, web seeds or peers); a magnet link without any needs
// the DHT.
func (l Link) HasEndpoints() bool {
	return len(l.Trackers)+len(l.WebSeeds)+len(l.Peers) > 0 || l.TorrentURL != ""
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
