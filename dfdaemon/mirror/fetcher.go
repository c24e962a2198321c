package mirror

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// blobAuthorizer confirms a client may read a registry blob (Authorizer).
type blobAuthorizer interface {
	Authorize(ctx context.Context, base *url.URL, repo string, d digest.Digest, header http.Header) (int64, error)
}

// Fetcher is the forward proxy's way into the peer engine (it is a
// proxy.Fetcher): every fetch goes through the node's blob cache.
//
// A registry blob URL (.../v2/<name>/blobs/sha256:<hex>) of a registry the
// node's configuration names (mirror.registry, mirror.upstreams; see
// Registries) becomes the task of that digest, shared with the
// mirror and every other node, after the client's own credentials have
// been confirmed on that registry exactly as the mirror does; a refusal
// fails the fetch, so the proxy forwards the request and the client gets
// the registry's own answer. A blob URL of any other host is never
// authorised by that host: it is a URL task of its own (its ID from the URL
// and the client's credentials, so it shares nothing with the digest tasks
// or the node's cached blobs), checked against the digest in its path. Any
// other URL is a URL task; when the request carries credentials
// (Authorization or Cookie) the task is kept apart per credential, so
// cached content is never served to a client with other credentials.
type Fetcher struct {
	blobs *blobcache.Cache
	auth  blobAuthorizer
	// trusted are the registries whose yes may open a digest task.
	trusted Registries
}

// NewFetcher returns the fetcher that downloads through blobs, confirms
// reads of registry blobs with auth (an Authorizer whose HTTP client
// enforces the proxy's outbound policy) and opens digest tasks for the
// registries in trusted only.
func NewFetcher(blobs *blobcache.Cache, auth blobAuthorizer, trusted Registries) *Fetcher {
	return &Fetcher{blobs: blobs, auth: auth, trusted: trusted}
}

// blobPath matches the path of a registry blob.
var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[a-f0-9]{64})$`)

// Fetch starts or joins the download of rawURL and streams it.
func (f *Fetcher) Fetch(ctx context.Context, rawURL string, header http.Header) (io.ReadCloser, int64, error) {
	lease, size, verify, err := f.acquire(ctx, rawURL, header)
	if err != nil {
		return nil, 0, fmt.Errorf("fetch: %w", err)
	}
	if size < 0 {
		size = lease.Progress().Size
	}
	body := (&leaseParts{lease: lease}).add(lease.NewReader(0))
	if verify != "" {
		if body, err = VerifyDigest(body, verify, 0); err != nil {
			return nil, 0, fmt.Errorf("fetch: %w", err)
		}
	}
	return body, size, nil
}

// FetchRange starts or joins the download of rawURL, waits until its size
// is known, and returns the part rangeHeader selects, opened (see
// httpx.Body: the whole content is read to its verified end, a partial
// range as soon as its pieces are verified, every range's pieces wanted
// first). size is the content's size once known (-1 before), also with an
// error wrapping httpx.ErrRangeUnsatisfiable. Closing the body releases the
// download. A blob of a registry the configuration does not name is read
// from its first byte and checked against its digest, as Fetch does.
func (f *Fetcher) FetchRange(ctx context.Context, rawURL string, header http.Header, rangeHeader string) (*httpx.Body, int64, error) {
	lease, size, verify, err := f.acquire(ctx, rawURL, header)
	if err != nil {
		return nil, -1, fmt.Errorf("fetch range: %w", err)
	}
	if size < 0 {
		if size, err = lease.Size(ctx); err != nil {
			lease.Release()
			return nil, -1, fmt.Errorf("fetch range: size: %w", err)
		}
	}
	body, err := httpx.NewBody(rangeHeader, size, "application/octet-stream")
	if err != nil {
		lease.Release()
		return nil, size, fmt.Errorf("fetch range: %w", err)
	}
	parts := &leaseParts{lease: lease}
	err = body.Open(func(off, n int64) (io.ReadCloser, error) {
		if verify == "" {
			return parts.add(lease.NewRangeReader(off, n)), nil
		}
		rc, err := VerifyRange(lease.NewReader(0), verify, off, n, size)
		return parts.add(rc), err
	})
	if err != nil {
		lease.Release()
		return nil, size, fmt.Errorf("fetch range: %w", err)
	}
	return body, size, nil
}

// acquire maps rawURL to its download request (see Fetcher) and acquires
// it. size is the blob's size when the registry told it (-1 otherwise);
// verify is the digest to check the content against, if any.
func (f *Fetcher) acquire(ctx context.Context, rawURL string, header http.Header) (lease *blobcache.Lease, size int64, verify digest.Digest, err error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, 0, "", err
	}
	req := peer.Request{URL: rawURL, BackToSource: true}
	size = -1
	if m := blobPath.FindStringSubmatch(u.EscapedPath()); m != nil && u.RawQuery == "" &&
		registrysource.ValidateRepository(m[1]) == nil {
		d := digest.Digest(m[2])
		base := &url.URL{Scheme: u.Scheme, Host: u.Host}
		shared := f.trusted.Names(base)
		if shared {
			if size, err = f.auth.Authorize(ctx, base, m[1], d, header); err != nil {
				return nil, 0, "", fmt.Errorf("authorize blob: %w", err)
			}
		}
		if req, shared, err = f.trusted.BlobRequest(base, m[1], d, header, size); err != nil {
			return nil, 0, "", err
		}
		if !shared {
			verify = d
		}
	} else {
		req.Header = header.Clone()
		req.Identifier = CredentialIdentifier(header)
	}
	if lease, err = f.blobs.Acquire(ctx, req); err != nil {
		return nil, 0, "", err
	}
	return lease, size, verify, nil
}

// leaseParts releases a lease once every reader opened on it (one for a
// whole body, one per range for a ranged one) is closed.
type leaseParts struct {
	lease *blobcache.Lease
	open  atomic.Int32
}

func (p *leaseParts) add(rc io.ReadCloser) io.ReadCloser {
	if rc == nil {
		return nil
	}
	p.open.Add(1)
	return &leasePart{ReadCloser: rc, p: p}
}

type leasePart struct {
	io.ReadCloser
	p    *leaseParts
	once sync.Once
}

func (l *leasePart) Close() error {
	err := l.ReadCloser.Close()
	l.once.Do(func() {
		if l.p.open.Add(-1) == 0 {
			l.p.lease.Release()
		}
	})
	return err
}
