package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/registryapi"
)

// Blobs downloads blobs through the node's peer engine (blobcache.Cache).
type Blobs interface {
	// Open returns n bytes of the content of req from off (n < 0: to the
	// end), as the engine verifies them; the pieces covering them are
	// fetched first. With n < 0 it ends with io.EOF only after the whole
	// blob's digest is verified; with n >= 0 after the n-th byte, each
	// verified against its piece's digest. Close releases it; the download
	// itself goes on.
	Open(ctx context.Context, req peer.Request, off, n int64) (io.ReadCloser, error)
}

// p2pBlobs is the mirror's blob backend: the read check (Authorizer), then
// the blob through the peer engine, streamed as it is verified (see the
// package doc).
type p2pBlobs struct {
	blobs   Blobs
	auth    *Authorizer
	trusted Registries
	logger  *zap.Logger
	bytes   prometheus.Counter
}

var _ registryapi.Blobs = (*p2pBlobs)(nil)

// blobHeaders are the headers ServeBlob sets before the first byte, removed
// again when it fails before it.
var blobHeaders = []string{"Content-Length", "Content-Range", "Docker-Content-Digest", "ETag", "Accept-Ranges", "Cache-Control", "Content-Type"}

// ServeBlob answers GET or HEAD of b (see registryapi.Blobs).
func (p *p2pBlobs) ServeBlob(w http.ResponseWriter, r *http.Request, b registryapi.Blob) error {
	ctx := r.Context()
	auth := clientAuth(r)
	d := b.Digest
	size, err := p.auth.Authorize(ctx, b.Upstream, b.Repo, d, auth)
	if err != nil {
		if unreachable(err) || throttled(err) {
			return fmt.Errorf("authorize blob: %w: %w", registryapi.ErrUnavailable, err)
		}
		return fmt.Errorf("authorize blob: %w", err)
	}

	h := w.Header()
	body, err := httpx.NewBody(r.Header.Get("Range"), size, "application/octet-stream")
	if err != nil {
		if size >= 0 {
			h.Set("Content-Range", httpx.UnsatisfiedContentRange(size))
		}
		return errcode.ErrorCodeRangeInvalid.WithMessage(err.Error())
	}
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "max-age=31536000")
	body.SetHeader(h)
	if r.Method == http.MethodHead {
		w.WriteHeader(body.Status)
		return nil
	}

	req, shared, err := p.trusted.BlobRequest(b.Upstream, b.Repo, d, auth, size)
	if err != nil {
		return p.failed(w, errcode.ErrorCodeNameInvalid.WithMessage("invalid repository name"))
	}
	open := func(off, n int64) (io.ReadCloser, error) { return p.blobs.Open(ctx, req, off, n) }
	if !shared {
		// A registry the config does not name: its own URL task, read
		// from its first byte and checked against d here.
		open = func(off, n int64) (io.ReadCloser, error) {
			rc, err := p.blobs.Open(ctx, req, 0, -1)
			if err != nil {
				return nil, err
			}
			return VerifyRange(rc, d, off, n, size)
		}
	}
	if err := body.Open(open); err != nil {
		return p.failed(w, downloadError(err))
	}
	defer body.Close()
	// A Read blocked on a piece returns once the client is gone.
	stop := context.AfterFunc(ctx, func() { _ = body.Close() })
	defer stop()

	lw := &httpx.LazyWriter{W: w, Status: body.Status}
	_, err = body.WriteTo(lw)
	p.bytes.Add(float64(lw.N))
	if err != nil {
		if !lw.Started() {
			return p.failed(w, downloadError(err))
		}
		if ctx.Err() == nil {
			p.logger.Warn("blob stream broken", zap.Stringer("digest", d), zap.Error(err))
		}
		// Never a clean short body: abort the connection.
		panic(http.ErrAbortHandler)
	}
	lw.Start()
	return nil
}

// failed removes the headers of a blob answer that failed before its first
// byte, and returns err for the front to answer.
func (p *p2pBlobs) failed(w http.ResponseWriter, err error) error {
	for _, k := range blobHeaders {
		w.Header().Del(k)
	}
	return err
}

// downloadError is the answer to a download that failed before any byte
// was sent: the engine's errors in the registry's vocabulary, wrapping the
// cause for the front's log.
func downloadError(err error) error {
	switch {
	case errors.Is(err, peer.ErrInvalid):
		return fmt.Errorf("%w: %w", errcode.ErrorCodeDigestInvalid.WithMessage("invalid blob request"), err)
	case errors.Is(err, peer.ErrDigestMismatch), errors.Is(err, peer.ErrSizeMismatch):
		return fmt.Errorf("%w: %w", registryapi.ErrorCodeUpstream.WithMessage("the upstream's content does not match its digest"), err)
	default:
		return fmt.Errorf("%w: %w", errcode.ErrorCodeUnavailable.WithMessage("blob download failed"), err)
	}
}

// clientAuth is the only request header that reaches the upstream and the
// supernode: the client's own credentials.
func clientAuth(r *http.Request) http.Header {
	h := http.Header{}
	for _, v := range r.Header.Values("Authorization") {
		h.Add("Authorization", v)
	}
	return h
}
