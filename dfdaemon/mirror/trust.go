package mirror

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// Registries is the set of registries a node's configuration names: the
// default upstream (Config.Registry) and every Config.Upstreams entry,
// each with its scheme (https, or http for an insecure upstream).
// Config.AllowAnyUpstream adds nothing to it.
//
// Only a registry in this set may authorise a read of a digest task: its
// yes to a HEAD lets a client read task "sha256:<hex>", which every client
// and node shares, and the node's cached copy of it. A blob of any other
// registry (an ?ns= host allowed only by AllowAnyUpstream, or a host a
// forward-proxy request names) is downloaded as a URL task of its own
// (BlobRequest), which shares nothing with the digest tasks, so a registry
// that says yes to everything gets back only what it serves itself.
//
// The mirror and the forward proxy (dfdaemon/cmd's fetcher) decide with
// the same set, from the same Config.
type Registries struct {
	bases map[string]bool // registryKey of each named registry
}

// Registries returns the registries c names (defaults applied; c must be
// valid).
func (c Config) Registries() Registries {
	c = c.ApplyDefaults()
	r := Registries{bases: map[string]bool{}}
	add := func(u *url.URL) {
		if k, ok := registryKey(u); ok {
			r.bases[k] = true
		}
	}
	if u, err := parseBase(c.Registry); err == nil {
		add(u)
	}
	for _, up := range c.Upstreams {
		scheme := "https"
		if up.Insecure {
			scheme = "http"
		}
		add(&url.URL{Scheme: scheme, Host: strings.TrimSpace(up.Host)})
	}
	return r
}

// Names reports whether base (scheme://host[:port]) is a registry of the
// configuration: same scheme, same host (Docker Hub under any of its
// names), same port (a default port written or not).
func (r Registries) Names(base *url.URL) bool {
	if base == nil || r.bases == nil {
		return false
	}
	k, ok := registryKey(base)
	return ok && r.bases[k]
}

// registryKey is scheme://host[:port], lowercase, with the scheme's
// default port removed and Docker Hub named by its API host.
func registryKey(u *url.URL) (string, bool) {
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Host)
	switch {
	case scheme == "https" && strings.HasSuffix(host, ":443"):
		host = strings.TrimSuffix(host, ":443")
	case scheme == "http" && strings.HasSuffix(host, ":80"):
		host = strings.TrimSuffix(host, ":80")
	}
	h, err := canonicalHost(host)
	if err != nil {
		return "", false
	}
	return scheme + "://" + h, true
}

// BlobRequest is the peer engine request for blob d of repo on the
// registry at base, for a client with the credentials in auth (its
// Authorization; nothing else is sent). size is the size the registry
// announced (-1: unknown).
//
// For a registry r names, it is the digest task "sha256:<hex>": shared by
// every client and node, and served from the node's cache, because that
// registry has just confirmed (Authorizer) that the client may read d. For
// any other registry it is a URL task: its ID is derived from the blob's
// URL and the client's credentials (CredentialIdentifier), never from d,
// so it shares nothing with the digest tasks or the cache's committed
// blobs; shared is false and the caller must check the content against d
// itself (VerifyDigest), since the engine checks a URL task against no
// digest.
func (r Registries) BlobRequest(base *url.URL, repo string, d digest.Digest, auth http.Header, size int64) (req peer.Request, shared bool, err error) {
	blobURL, err := registrysource.BlobURL(base, repo, d)
	if err != nil {
		return peer.Request{}, false, err
	}
	req = peer.Request{URL: blobURL, Header: http.Header{}, Size: size, BackToSource: true}
	for _, v := range auth.Values("Authorization") {
		req.Header.Add("Authorization", v)
	}
	if r.Names(base) {
		req.Digest = d
		return req, true, nil
	}
	req.Identifier = CredentialIdentifier(req.Header)
	return req, false, nil
}

// CredentialIdentifier is the task identifier (peer.Request.Identifier)
// that keeps a URL task apart per credential: a hash of the Authorization
// and Cookie values of h, or "" when it has neither. Content fetched with
// one client's credentials is then never served to a client with other
// credentials, and the credentials themselves never appear in a task ID.
func CredentialIdentifier(h http.Header) string {
	creds := append(h.Values("Authorization"), h.Values("Cookie")...)
	if len(creds) == 0 {
		return ""
	}
	sum := sha256.New()
	for _, v := range creds {
		sum.Write([]byte(v))
		sum.Write([]byte{0})
	}
	return "credentials:" + hex.EncodeToString(sum.Sum(nil))
}

// VerifyDigest returns rc read through a check against d: it ends with
// io.EOF only when the content read from its start hashes to d; otherwise
// the final read fails with an error wrapping peer.ErrDigestMismatch. rc
// must start at offset 0; skip bytes are hashed and dropped first, so the
// returned reader starts at offset skip. Closing it closes rc.
func VerifyDigest(rc io.ReadCloser, d digest.Digest, skip int64) (io.ReadCloser, error) {
	if d.Algorithm() != digest.SHA256 {
		rc.Close()
		return nil, fmt.Errorf("verify %s: only sha256: %w", d, peer.ErrInvalid)
	}
	v := &verifier{rc: rc, want: d, h: sha256.New()}
	if skip > 0 {
		if _, err := io.CopyN(v.h, rc, skip); err != nil {
			rc.Close()
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("content shorter than offset %d: %w", skip, io.ErrUnexpectedEOF)
			}
			return nil, err
		}
	}
	return v, nil
}

type verifier struct {
	rc   io.ReadCloser
	want digest.Digest
	h    hash.Hash
	err  error
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		if got := digest.NewDigestFromBytes(digest.SHA256, v.h.Sum(nil)); got != v.want {
			v.err = fmt.Errorf("content is %s, want %s: %w", got, v.want, peer.ErrDigestMismatch)
			if n > 0 {
				return n, nil // the error comes with the next read
			}
			return 0, v.err
		}
		v.err = io.EOF
	}
	return n, err
}

func (v *verifier) Close() error { return v.rc.Close() }

// VerifyRange returns n bytes from off (n < 0: to the end) of content of
// size bytes (< 0: unknown), read from rc, which starts at offset 0, and
// checked against d (VerifyDigest). It is how a range of a blob without
// trusted piece digests (a registry the configuration does not name) is
// served, as it always was: the whole content, and a range reaching its end,
// give their last bytes (up to httpx.HoldBack) only once the whole content
// matched d; a range ending before the end is read from the start and
// served as read. Closing it closes rc.
func VerifyRange(rc io.ReadCloser, d digest.Digest, off, n, size int64) (io.ReadCloser, error) {
	v, err := VerifyDigest(rc, d, off)
	if err != nil || n < 0 {
		return v, err
	}
	if size >= 0 && off+n == size {
		return readCloser{Reader: &heldTail{r: v, head: n - min(n, httpx.HoldBack), tail: min(n, httpx.HoldBack)}, Closer: v}, nil
	}
	return readCloser{Reader: io.LimitReader(v, n), Closer: v}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// heldTail reads head bytes from r as they come, then tail more which it
// gives out only once r has ended with io.EOF.
type heldTail struct {
	r          io.Reader
	head, tail int64
	held       []byte // the tail, once r has ended cleanly
	released   bool
}

func (h *heldTail) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if h.head > 0 {
		n, err := h.r.Read(p[:min(int64(len(p)), h.head)])
		h.head -= int64(n)
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the tail is missing
		}
		return n, err
	}
	if !h.released {
		buf := make([]byte, h.tail)
		if _, err := io.ReadFull(h.r, buf); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		var one [1]byte
		for i := 0; ; i++ {
			n, err := h.r.Read(one[:])
			if n > 0 {
				return 0, errors.New("content longer than its size")
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return 0, err
			}
			if i == 100 {
				return 0, io.ErrNoProgress
			}
		}
		h.held, h.released = buf, true
	}
	if len(h.held) == 0 {
		return 0, io.EOF
	}
	n := copy(p, h.held)
	h.held = h.held[n:]
	return n, nil
}
