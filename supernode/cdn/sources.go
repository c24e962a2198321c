package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/source"
)

// Opening and watching sources: the next candidate that answers, the
// checks of what it announces, and the rate and space it is held to.

// sourceBody is the response of the candidate being read.
type sourceBody struct {
	cand *candidate
	url  string // raw: redacted whenever it is shown
	// asked is the offset asked for; resp.Offset is 0 instead when the
	// source ignored the range and sends everything.
	asked int64
	resp  *source.Response
	// cancel ends the request of this source, body included.
	cancel context.CancelFunc
}

// openNext opens the next candidate that answers for the content from off
// (a piece boundary), consistent with the task's size (-1 while unknown).
// A candidate that has not answered within Config.MinSourceRateWindow is
// given up when another one is waiting. It reports false when no candidate
// is left.
func (c *CDN) openNext(ctx context.Context, f *fetch, off, size int64, log *zap.Logger) (sourceBody, bool) {
	for {
		cand := f.cands.next()
		if cand == nil || ctx.Err() != nil {
			return sourceBody{}, false
		}
		url, header, own := f.cands.request(cand)
		// The body lives on cctx: cancelling it ends this source only.
		cctx, cancel := context.WithCancel(ctx)
		var slow atomic.Bool
		answered := make(chan struct{})
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			c.watchAnswer(answered, f.cands.waiting, func() {
				slow.Store(true)
				cancel()
			})
		}()
		resp, err := c.openSource(cctx, url, header, off, size, own, f.cands.knownSizes)
		close(answered)
		<-watched
		if err == nil && !slow.Load() {
			return sourceBody{cand: cand, url: url, asked: off, resp: resp, cancel: cancel}, true
		}
		if err == nil {
			resp.Body.Close()
		}
		if slow.Load() {
			err = fmt.Errorf("%w: no answer within %s", errTooSlow, c.cfg.MinSourceRateWindow)
		}
		cancel()
		f.cands.fail(cand, err)
		c.metrics.sourcesGivenUp.Inc()
		log.Warn("source given up", zap.String("source", redact.URL(url)), zap.Int64("offset", off), zap.Error(err))
	}
}

// watchAnswer calls slow, once, when answered is still open after
// Config.MinSourceRateWindow while waiting reports another candidate.
func (c *CDN) watchAnswer(answered <-chan struct{}, waiting func() bool, slow func()) {
	if c.cfg.MinSourceRate <= 0 {
		return
	}
	window := c.cfg.MinSourceRateWindow
	timer := time.NewTimer(window)
	defer timer.Stop()
	for {
		select {
		case <-answered:
			return
		case <-timer.C:
			if waiting() {
				slow()
				return
			}
			timer.Reset(max(window/8, 10*time.Millisecond))
		}
	}
}

// openSource asks a source for the content from off. A source that fails a
// request from off > 0 is asked again from the start (it may ignore
// ranges); the pieces before off are then checked as they come again. The
// size the source announces must be within Config.MaxSourceSize and agree
// with size (the task's, -1 while unknown), with own (what the offering
// member knows, 0 when nothing) and be one of known() (the sizes the
// members offering sources know, asked once the source has answered) when
// any member knows one. Errors never carry the URL's query.
func (c *CDN) openSource(ctx context.Context, url string, header http.Header, off, size, own int64, known func() []int64) (*source.Response, error) {
	resp, err := c.src.Fetch(ctx, source.Request{URL: url, Header: header, Offset: off})
	var se *source.StatusError
	if err != nil && off > 0 && ctx.Err() == nil && !errors.Is(err, source.ErrNotFound) && !errors.As(err, &se) {
		resp, err = c.src.Fetch(ctx, source.Request{URL: url, Header: header})
	}
	if err != nil {
		return nil, sourceErrorMessage(url, err)
	}
	var bad error
	switch announced, known := resp.Size, known(); {
	case resp.Offset != 0 && resp.Offset != off:
		bad = fmt.Errorf("source answered from byte %d, not %d", resp.Offset, off)
	case announced > int64(c.cfg.MaxSourceSize):
		bad = fmt.Errorf("source announces %d bytes, more than cdn.maxSourceSize (%s)", announced, c.cfg.MaxSourceSize)
	case own > 0 && announced >= 0 && announced != own:
		bad = fmt.Errorf("source announces %d bytes, the member that offered it knows %d", announced, own)
	case len(known) > 0 && announced >= 0 && !slices.Contains(known, announced):
		bad = fmt.Errorf("source announces %d bytes, the members know %v", announced, known)
	case size >= 0 && announced >= 0 && announced != size:
		bad = fmt.Errorf("source announces %d bytes, the task has %d", announced, size)
	case announced > off:
		bad = c.checkSpace(ctx, announced-off)
	}
	if bad != nil {
		resp.Body.Close()
		return nil, bad
	}
	return resp, nil
}

// countingReader counts the bytes read through it, and hands each read's
// count to add when set.
type countingReader struct {
	r   io.Reader
	n   atomic.Int64
	add func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if n > 0 && c.add != nil {
		c.add(int64(n))
	}
	return n, err
}

// watchRate calls slow once, and returns, when the bytes read through cr
// over the last window are fewer than stallRate allows (stalled true), or
// fewer than minRate allows while waiting reports another candidate to
// move to (stalled false). It returns when ctx is done.
func watchRate(ctx context.Context, cr *countingReader, minRate, stallRate int64, window time.Duration, waiting func() bool, slow func(stalled bool)) {
	if (minRate <= 0 && stallRate <= 0) || window <= 0 {
		return
	}
	type sample struct {
		at time.Time
		n  int64
	}
	tick := max(window/8, 10*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	samples := []sample{{time.Now(), cr.n.Load()}}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			samples = append(samples, sample{now, cr.n.Load()})
			// Keep the newest sample at least a window old as the base.
			cut := 0
			for i, s := range samples {
				if now.Sub(s.at) >= window {
					cut = i
				}
			}
			samples = samples[cut:]
			base := samples[0]
			span := now.Sub(base.at)
			if span < window {
				continue
			}
			got := float64(samples[len(samples)-1].n - base.n)
			if got < float64(stallRate)*span.Seconds() {
				slow(true)
				return
			}
			if got < float64(minRate)*span.Seconds() && waiting() {
				slow(false)
				return
			}
		}
	}
}
