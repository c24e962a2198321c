// Package taskid owns the task ID: the one rule that names a task, and the
// ID type every layer carries once an edge has parsed or derived it.
//
// A task whose content digest is known (an OCI blob, dfget --digest) is named
// by that digest, "sha256:<64 hex>", whatever URL, mirror or token it came
// through. Any other task is named by 64 lowercase hex characters: the sha256
// of its normalised URL (query keys named by the filter dropped, the rest
// sorted) and its identifier. Nothing else is a task ID, so a task ID is safe
// to use in a URL path or a file name.
//
// An ID is built by Derive (or its halves ForDigest and ForURL) from what a
// request names, or by Parse from a string that claims to be one (an HTTP
// path value, a JSON field, a file name on disk). Like digest.Digest, the
// type is a string underneath so it prints, compares and keys maps as one;
// converting a string to an ID by hand skips the check and is left to
// tests. Code past the edge takes an ID and does not check it again.
//
// The client (pkg/schedclient routes a register to the supernode owning its
// task; pkg/peer names a download the supernode could not) and the server
// (supernode/peerapi) derive the ID with the same call, Derive: a second copy
// of the rule that drifted would silently split one swarm across supernodes.
package taskid

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/redact"
)

// ErrInvalid is returned for a string that is not a task ID, and for a
// request no task ID can be derived from.
var ErrInvalid = errors.New("invalid task id")

// ID is a task ID. The zero ID is "no task"; every other ID a function of
// this package returns is valid.
type ID string

// String returns the ID as it is written on the wire.
func (id ID) String() string { return string(id) }

// Digest returns the content digest the ID names, if it names one.
func (id ID) Digest() (digest.Digest, bool) {
	if strings.HasPrefix(string(id), "sha256:") {
		return digest.Digest(id), true
	}
	return "", false
}

// FileName returns a name for the task that is safe as one path element: the
// ID with ':' replaced by '-'. It panics on an ID that is not valid, which
// only a hand conversion can build.
func (id ID) FileName() string {
	if err := check(string(id)); err != nil {
		panic(err)
	}
	return strings.Replace(string(id), ":", "-", 1)
}

// Parse returns s as an ID if it is one: "sha256:" followed by 64 lowercase
// hex characters, or 64 lowercase hex characters alone.
func Parse(s string) (ID, error) {
	if err := check(s); err != nil {
		return "", err
	}
	return ID(s), nil
}

// ParseAll parses every string of ss, failing on the first that is not an
// ID.
func ParseAll(ss []string) ([]ID, error) {
	if ss == nil {
		return nil, nil
	}
	ids := make([]ID, len(ss))
	for i, s := range ss {
		id, err := Parse(s)
		if err != nil {
			return nil, err
		}
		ids[i] = id
	}
	return ids, nil
}

// Strings returns ids as strings, for the wire.
func Strings(ids []ID) []string {
	if ids == nil {
		return nil
	}
	ss := make([]string, len(ids))
	for i, id := range ids {
		ss[i] = string(id)
	}
	return ss
}

// Source is what a task is named from: its content digest when the
// requester knows it, else its URL, the query keys to drop from it and an
// identifier separating tasks that share a URL but not content.
type Source struct {
	Digest     digest.Digest
	URL        string
	Filter     []string
	Identifier string
	// File is the file of a torrent (URL a magnet link or a torrent file
	// URL) the task downloads; empty for a single-file torrent and for
	// every other URL.
	File string
}

// Derive returns the ID of the task src names: ForDigest of its digest when
// it has one (the URL, filter and identifier are then ignored), else ForURL.
// This is the rule; client and server both call it.
func Derive(src Source) (ID, error) {
	if src.Digest != "" {
		return ForDigest(src.Digest)
	}
	if btlink.IsLink(src.URL) {
		return ForTorrent(src.URL, src.File, src.Identifier)
	}
	if src.File != "" {
		return "", fmt.Errorf("a file (%q) names a file of a torrent, and %q is no torrent: %w", redact.Truncate(src.File), redact.URL(src.URL), ErrInvalid)
	}
	return ForURL(src.URL, src.Filter, src.Identifier)
}

// ForTorrent returns the ID of the task that downloads file (empty: the
// only file) of the torrent a magnet link or a torrent file URL names. A
// magnet link is named by its info-hash alone (whatever trackers, peers or
// name it lists), a torrent file URL by its normalised URL.
func ForTorrent(rawLink, file, identifier string) (ID, error) {
	l, err := btlink.Parse(rawLink)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	norm := l.Canonical()
	if l.TorrentURL != "" {
		u, err := Normalize(l.TorrentURL, nil)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		norm = "torrent+" + u
	}
	sum := sha256.Sum256([]byte(norm + "\n" + identifier + "\nfile:" + file))
	return ID(hex.EncodeToString(sum[:])), nil
}

// ForDigest returns the ID of the task that downloads content with digest d.
func ForDigest(d digest.Digest) (ID, error) {
	// Validate first: Algorithm panics on a string without ':'.
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("task digest %q: %w", redact.Truncate(string(d)), ErrInvalid)
	}
	if d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("task digest %q: only sha256 is supported: %w", redact.Truncate(string(d)), ErrInvalid)
	}
	return ID(d.String()), nil
}

// ForURL returns the ID of the task that downloads rawURL. Query keys listed
// in filter (for example expiring signatures) are dropped first, so that two
// URLs differing only in them share one task; identifier separates tasks that
// share a URL but not content.
func ForURL(rawURL string, filter []string, identifier string) (ID, error) {
	norm, err := Normalize(rawURL, filter)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(norm + "\n" + identifier))
	return ID(hex.EncodeToString(sum[:])), nil
}

// Normalize returns rawURL with its scheme and host lowercased, default ports
// and the fragment removed, the query keys in filter dropped and the
// remaining query sorted.
func Normalize(rawURL string, filter []string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("parse url: %w", err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("url %q: scheme must be http or https", rawURL)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", fmt.Errorf("url %q: no host", rawURL)
	}
	port := u.Port()
	if (u.Scheme == "http" && port == "80") || (u.Scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	u.Host = host
	u.Fragment, u.RawFragment = "", ""
	u.User = nil
	q := u.Query()
	for _, k := range filter {
		q.Del(k)
	}
	u.RawQuery = q.Encode() // Encode sorts by key.
	return u.String(), nil
}

// check reports whether s is a task ID.
func check(s string) error {
	hexPart := strings.TrimPrefix(s, "sha256:")
	if len(hexPart) != 64 {
		return fmt.Errorf("%q: %w", redact.Truncate(s), ErrInvalid)
	}
	for i := 0; i < len(hexPart); i++ {
		c := hexPart[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%q: %w", redact.Truncate(s), ErrInvalid)
		}
	}
	return nil
}

// ParseFilter splits a --filter value ("k1&k2") into query keys.
func ParseFilter(s string) []string {
	var keys []string
	for k := range strings.SplitSeq(s, "&") {
		if k = strings.TrimSpace(k); k != "" && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// UnmarshalText parses an ID from JSON or another text encoding, so that a
// struct decoded from outside holds a valid ID or fails to decode.
func (id *ID) UnmarshalText(b []byte) error {
	parsed, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = parsed
	return nil
}
