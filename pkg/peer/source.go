package peer

import (
	"context"
	"errors"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/source"
)

// sourceBuf is the copy buffer of a back-to-source fetch.
const sourceBuf = 256 << 10

// fromSource downloads the whole content from its source into a fresh
// ingest, hashing it as it streams, and commits it (checked against the
// requested digest when there is one). Pieces fetched from peers so far are
// dropped: the source is the one authority from here on.
func (t *task) fromSource(ctx context.Context) error {
	// Drop the P2P ingest (and with it what was served of it).
	t.ioMu.Lock()
	t.dropIngestLocked()
	t.mu.Lock()
	t.mode = modeSource
	t.progress.Completed = 0
	t.mu.Unlock()
	t.ioMu.Unlock()

	w, err := t.e.store.Writer(ctx, t.ref)
	if err != nil {
		return fmt.Errorf("open ingest: %w", err)
	}
	t.ioMu.Lock()
	t.mu.Lock()
	t.w = w
	t.gen++
	t.mu.Unlock()
	t.ioMu.Unlock()

	resp, err := t.e.source.Fetch(ctx, source.Request{URL: t.req.URL, Header: t.req.Header})
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer resp.Body.Close()
	if t.req.Size > 0 && resp.Size >= 0 && resp.Size != t.req.Size {
		return fmt.Errorf("source: %w: want %d bytes, the source has %d", ErrSizeMismatch, t.req.Size, resp.Size)
	}
	t.mu.Lock()
	t.progress.Size = resp.Size
	if resp.Size >= 0 {
		t.info.Size = resp.Size
	}
	t.mu.Unlock()

	dg := digest.SHA256.Digester()
	body := &limitedReader{ctx: ctx, r: resp.Body, limiters: t.e.limiters}
	buf := make([]byte, sourceBuf)
	var total int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if err := t.appendSource(buf[:n]); err != nil {
				return fmt.Errorf("store source bytes: %w", err)
			}
			_, _ = dg.Hash().Write(buf[:n])
			total += int64(n)
			t.e.metrics.bytes.WithLabelValues("source").Add(float64(n))
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("source: read: %w", rerr)
		}
	}
	if resp.Size >= 0 && total != resp.Size {
		return fmt.Errorf("source: short body: got %d of %d bytes", total, resp.Size)
	}
	got := dg.Digest()
	if t.req.Digest != "" && got != t.req.Digest {
		return fmt.Errorf("%w: want %s, got %s", ErrDigestMismatch, t.req.Digest, got)
	}

	t.ioMu.Lock()
	defer t.ioMu.Unlock()
	if err := w.Commit(ctx, total, got); err != nil && !errors.Is(err, content.ErrAlreadyExists) {
		t.dropIngestLocked()
		return fmt.Errorf("commit: %w", err)
	}
	if err := t.publishLocked(ctx, Result{Digest: got, Size: total, FromSource: true}); err != nil {
		return err
	}
	t.log.Info("downloaded from source", zap.Stringer("digest", got), zap.Int64("size", total))
	return nil
}

// appendSource writes the next bytes from the source and makes them
// readable to in-order readers.
func (t *task) appendSource(p []byte) error {
	t.ioMu.RLock()
	if t.w == nil {
		t.ioMu.RUnlock()
		return errors.New("no ingest")
	}
	_, err := t.w.Write(p)
	t.ioMu.RUnlock()
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.srcOff += int64(len(p))
	t.progress.Completed += int64(len(p))
	t.progress.FromSource += int64(len(p))
	t.notifyLocked()
	t.mu.Unlock()
	return nil
}
