package httpsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/source"
)

// errStalled is the read error of a response that sent nothing for the idle
// timeout.
var errStalled = errors.New("transfer stalled")

// body is a response body that resumes a broken transfer. It is not safe for
// concurrent Reads, like any io.Reader; Close may be called at any time.
type body struct {
	c         *Client
	ctx       context.Context // the Fetch call's, bounding the whole transfer
	url       *url.URL
	header    http.Header
	validator string
	size      int64 // -1 when unknown
	pos       int64 // absolute offset of the next byte
	end       int64 // end (exclusive) of a bounded request, -1 when open
	budget    int   // retries left; restored after progress

	mu       sync.Mutex // guards rc, cancel, closed against Close
	rc       io.ReadCloser
	cancel   context.CancelFunc
	closed   bool
	idle     *time.Timer
	stalled  atomic.Bool
	broken   error // a read error to resume from before the next read
	progress bool  // bytes arrived since the last resume
}

// attach makes resp the current response.
func (b *body) attach(resp *http.Response, cancel context.CancelFunc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rc, b.cancel = resp.Body, cancel
	b.stalled.Store(false)
	if b.idle == nil {
		b.idle = time.AfterFunc(b.c.idleTimeout, b.onIdle)
	}
	b.idle.Stop()
}

// onIdle cancels the current request when a read waited too long.
func (b *body) onIdle() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stalled.Store(true)
	if b.cancel != nil {
		b.cancel()
	}
}

// Read reads from the current response and resumes the transfer when it
// breaks.
func (b *body) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		b.mu.Lock()
		closed, rc := b.closed, b.rc
		b.mu.Unlock()
		if closed {
			return 0, fmt.Errorf("fetch %s: read after close", redact.URL(b.url.String()))
		}
		limit := b.limit()
		if limit >= 0 && b.pos >= limit {
			return 0, io.EOF
		}
		if limit >= 0 && int64(len(p)) > limit-b.pos {
			p = p[:limit-b.pos]
		}
		if b.broken != nil {
			if err := b.resume(); err != nil {
				return 0, err
			}
			continue
		}
		b.idle.Reset(b.c.idleTimeout)
		n, err := rc.Read(p)
		b.idle.Stop()
		b.pos += int64(n)
		if n > 0 {
			b.progress = true
		}
		switch {
		case err == nil:
			return n, nil
		case errors.Is(err, io.EOF) && (limit < 0 || b.pos == limit):
			return n, io.EOF
		case errors.Is(err, io.EOF) && b.pos > limit:
			return n, fmt.Errorf("fetch %s: more than the announced %d bytes: %w", redact.URL(b.url.String()), limit, ErrContentChanged)
		case errors.Is(err, io.EOF):
			err = fmt.Errorf("body ended at %d of %d bytes: %w", b.pos, limit, io.ErrUnexpectedEOF)
		case b.stalled.Load():
			err = fmt.Errorf("no byte for %s: %w", b.c.idleTimeout, errStalled)
		case b.ctx.Err() != nil:
			return n, fmt.Errorf("fetch %s: %w", redact.URL(b.url.String()), b.ctx.Err())
		}
		// The transfer broke: hand out what arrived, resume on the next Read.
		b.broken = err
		if n > 0 {
			return n, nil
		}
	}
}

// limit is the absolute offset where the body ends: the end of a bounded
// request, clamped to the content's size, or the size (-1 when unknown).
func (b *body) limit() int64 {
	if b.end >= 0 && (b.size < 0 || b.end < b.size) {
		return b.end
	}
	return b.size
}

// resume replaces the broken response by one from b.pos.
func (b *body) resume() error {
	name := redact.URL(b.url.String())
	cause := b.broken
	if b.validator == "" {
		return fmt.Errorf("fetch %s at %d: %w: %w", name, b.pos, ErrNotResumable, cause)
	}
	if b.progress {
		b.budget = b.c.retries
		b.progress = false
	}
	if b.budget <= 0 {
		return fmt.Errorf("fetch %s at %d: out of retries: %w", name, b.pos, cause)
	}
	b.budget--
	b.c.log.Debug("resume source transfer", zap.String("url", name), zap.Int64("offset", b.pos), zap.Error(cause))

	b.mu.Lock()
	old, oldCancel := b.rc, b.cancel
	b.rc, b.cancel = nil, nil
	b.mu.Unlock()
	oldCancel()
	_ = old.Close()

	resp, cancel, err := b.c.request(b.ctx, b, b.validator)
	if errors.Is(err, source.ErrRangeNotSatisfiable) && b.size < 0 {
		// The content of unknown size ended exactly where the connection
		// broke: there is nothing left to read.
		b.broken = nil
		b.mu.Lock()
		b.rc, b.cancel = io.NopCloser(eofReader{}), func() {}
		b.mu.Unlock()
		return nil
	}
	if err != nil {
		return fmt.Errorf("resume at %d after %w: %w", b.pos, cause, err)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		cancel()
		_ = resp.Body.Close()
		return fmt.Errorf("fetch %s: read after close", name)
	}
	b.mu.Unlock()
	b.attach(resp, cancel)
	b.broken = nil
	return nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// Close ends the transfer.
func (b *body) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.idle != nil {
		b.idle.Stop()
	}
	if b.cancel != nil {
		b.cancel()
	}
	if b.rc != nil {
		_ = b.rc.Close()
	}
	return nil
}
