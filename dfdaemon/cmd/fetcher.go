package cmd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/dfdaemon/proxy"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// blobAuthorizer confirms a client may read a registry blob
// (mirror.Mirror.Authorize).
type blobAuthorizer interface {
	Authorize(ctx context.Context, base *url.URL, repo string, d digest.Digest, header http.Header) (int64, error)
}

// p2pFetcher is the forward proxy's way into the peer engine: every fetch
// goes through the node's blob cache.
//
// A registry blob URL (.../v2/<name>/blobs/sha256:<hex>) becomes the task
// of that digest, shared with the mirror and every other node, after the
// client's own credentials have been confirmed on the registry exactly as
// the mirror does; a refusal fails the fetch, so the proxy forwards the
// request and the client gets the registry's own answer. Any other URL is a
// URL task; when the request carries credentials (Authorization or Cookie)
// the task is kept apart per credential, so cached content is never served
// to a client with other credentials.
type p2pFetcher struct {
	blobs *blobcache.Cache
	auth  blobAuthorizer
}

var _ proxy.Fetcher = (*p2pFetcher)(nil)

// blobPath matches the path of a registry blob.
var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[a-f0-9]{64})$`)

// Fetch starts or joins the download of rawURL and streams it.
func (f *p2pFetcher) Fetch(ctx context.Context, rawURL string, header http.Header) (io.ReadCloser, int64, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, 0, fmt.Errorf("fetch: %w", err)
	}
	req := peer.Request{URL: rawURL, BackToSource: true}
	size := int64(-1)
	if m := blobPath.FindStringSubmatch(u.EscapedPath()); m != nil && u.RawQuery == "" &&
		registrysource.ValidateRepository(m[1]) == nil {
		d := digest.Digest(m[2])
		base := &url.URL{Scheme: u.Scheme, Host: u.Host}
		if size, err = f.auth.Authorize(ctx, base, m[1], d, header); err != nil {
			return nil, 0, fmt.Errorf("fetch: authorize blob: %w", err)
		}
		req.Digest = d
		req.Header = http.Header{}
		for _, v := range header.Values("Authorization") {
			req.Header.Add("Authorization", v)
		}
	} else {
		req.Header = header.Clone()
		if creds := header.Values("Authorization"); len(creds) > 0 || header.Get("Cookie") != "" {
			h := sha256.New()
			for _, v := range append(creds, header.Values("Cookie")...) {
				h.Write([]byte(v))
				h.Write([]byte{0})
			}
			req.Identifier = "credentials:" + hex.EncodeToString(h.Sum(nil))
		}
	}
	lease, err := f.blobs.Acquire(ctx, req)
	if err != nil {
		return nil, 0, fmt.Errorf("fetch: %w", err)
	}
	if size < 0 {
		size = lease.Progress().Size
	}
	return &leaseBody{ReadCloser: lease.NewReader(0), lease: lease}, size, nil
}

// leaseBody releases the lease with the body.
type leaseBody struct {
	io.ReadCloser
	lease *blobcache.Lease
}

func (b *leaseBody) Close() error {
	err := b.ReadCloser.Close()
	b.lease.Release()
	return err
}
