package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

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
	start, length, status := int64(0), size, http.StatusOK
	if rh := r.Header.Get("Range"); rh != "" {
		rg, err := httpx.ParseRange(rh, size)
		if err != nil {
			if size >= 0 {
				h.Set("Content-Range", httpx.UnsatisfiedContentRange(size))
			}
			return errcode.ErrorCodeRangeInvalid.WithMessage(err.Error())
		}
		start, length, status = rg.Start, rg.Length, http.StatusPartialContent
		h.Set("Content-Range", rg.ContentRange(size))
	}
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "max-age=31536000")
	if length >= 0 {
		h.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	h.Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return nil
	}

	req, shared, err := p.trusted.BlobRequest(b.Upstream, b.Repo, d, auth, size)
	if err != nil {
		return p.failed(w, errcode.ErrorCodeNameInvalid.WithMessage("invalid repository name"))
	}
	var rc io.ReadCloser
	if shared {
		rc, err = p.blobs.Open(ctx, req, start, -1)
	} else if rc, err = p.blobs.Open(ctx, req, 0, -1); err == nil {
		// A registry the config does not name: its own URL task, checked
		// against d here from its first byte.
		rc, err = VerifyDigest(rc, d, start)
	}
	if err != nil {
		return p.failed(w, downloadError(err))
	}
	defer rc.Close()
	// A Read blocked on a piece returns once the client is gone.
	stop := context.AfterFunc(ctx, func() { _ = rc.Close() })
	defer stop()

	lw := &lazyWriter{w: w, status: status}
	toEnd := length < 0 || (size >= 0 && start+length == size)
	err = copyBlob(lw, rc, length, toEnd)
	p.bytes.Add(float64(lw.n))
	if err != nil {
		if !lw.started {
			return p.failed(w, downloadError(err))
		}
		if ctx.Err() == nil {
			p.logger.Warn("blob stream broken", zap.Stringer("digest", d), zap.Error(err))
		}
		// Never a clean short body: abort the connection.
		panic(http.ErrAbortHandler)
	}
	lw.start()
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

// holdBack is how many bytes at the end of a blob wait for the verification
// of the whole blob.
const holdBack = 64 << 10

// copyBufSize is the buffer a blob is copied to the client through: a read
// takes what is verified up to that much, so large reads mean few system
// calls per byte.
const copyBufSize = 1 << 20

var copyBufs = sync.Pool{New: func() any {
	b := make([]byte, copyBufSize)
	return &b
}}

// errShort: the blob ended before the length the upstream announced.
var errShort = errors.New("blob shorter than announced")

// copyBlob copies want bytes (-1: all) from r to w. When the range reaches
// the end of the blob, the last bytes are written only after r has ended
// with io.EOF, which the engine's reader returns only once the whole blob's
// digest is verified.
func copyBlob(w io.Writer, r io.Reader, want int64, toEnd bool) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	if want < 0 {
		_, err := io.CopyBuffer(w, r, *bp) // io.EOF, and so success, only after verification
		return err
	}
	tail := int64(0)
	if toEnd {
		tail = min(want, holdBack)
	}
	if n, err := io.CopyBuffer(w, io.LimitReader(r, want-tail), *bp); err != nil {
		return err
	} else if n < want-tail {
		return fmt.Errorf("%w: %d of %d bytes", errShort, n, want)
	}
	if !toEnd {
		return nil
	}
	last := make([]byte, tail)
	if _, err := io.ReadFull(r, last); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: tail missing", errShort)
		}
		return err
	}
	var one [1]byte
	for range 1000 { // a Read returns data, an error, or blocks; bounded anyway
		n, err := r.Read(one[:])
		if n > 0 {
			return errors.New("blob longer than announced")
		}
		if errors.Is(err, io.EOF) {
			_, err := w.Write(last)
			return err
		}
		if err != nil {
			return err
		}
	}
	return errors.New("blob reader made no progress")
}

// lazyWriter sends the status line with the first byte, so that a download
// failing before any byte still gets an error response.
type lazyWriter struct {
	w       http.ResponseWriter
	status  int
	started bool
	n       int64
}

func (l *lazyWriter) start() {
	if !l.started {
		l.started = true
		l.w.WriteHeader(l.status)
	}
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	l.start()
	n, err := l.w.Write(p)
	l.n += int64(n)
	return n, err
}
