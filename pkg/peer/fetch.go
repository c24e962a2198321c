package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Piece fetch failures, named in the report to the supernode.
var (
	errDigestMismatch = errors.New("digest mismatch")
	errShortBody      = errors.New("short body")
	errLongBody       = errors.New("long body")
	errCutBody        = errors.New("body cut short")
	// errTooSlow: the piece did not arrive within its deadline at
	// Config.PieceMinRate.
	errTooSlow = errors.New("too slow")
	// errBadTrailer: the CDN ended an arriving piece's body without a
	// valid digest in its trailer.
	errBadTrailer = errors.New("bad piece digest trailer")
	// errArrivingCut: an arriving piece's transfer broke off (the CDN's
	// read of it failed, or the connection did).
	errArrivingCut = errors.New("arriving piece cut short")
)

// validAssignmentDigest checks an assignment's digest: a sha256 piece
// digest, or none for an Arriving assignment from the CDN, whose digest the
// CDN sends at the end of the transfer (fetch checks it there).
// checkAssignment calls it.
func validAssignmentDigest(a schedapi.Assignment) error {
	return schedapi.ValidAssignmentDigest(a)
}

type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("status %d", e.code) }

// readChunk is the most a fetch reads (and asks a limiter for) at once.
const readChunk = 64 << 10

// fetch downloads, verifies and stores one assigned piece.
func (t *task) fetch(ctx context.Context, a schedapi.Assignment) fetchResult {
	start := time.Now()
	res := schedapi.PieceResult{Piece: a.Piece, From: a.From.ID}
	from := "peer"
	if a.FromCDN {
		from = "cdn"
	}

	// A pooled buffer, until the piece cache takes it: as long as the
	// task's pieces, so that it serves any of them next.
	t.mu.Lock()
	ps := t.info.PieceSize
	t.mu.Unlock()
	bp := t.e.bufs.get(max(ps, a.Length))
	defer func() {
		if bp != nil {
			t.e.bufs.put(bp)
		}
	}()
	buf := (*bp)[:a.Length]

	var received time.Duration
	a, err := t.e.fetchVerified(ctx, t.id, a, buf, &received)
	res.Duration = time.Since(start)
	hashed := res.Duration
	if err != nil {
		res.Reason = pieceFailure(a, err)
		res.Error = failureReason(err)
		var refused error
		if errors.Is(err, netpolicy.ErrDenied) {
			refused = err
		}
		t.e.metrics.pieces.WithLabelValues("failed", from).Inc()
		t.e.metrics.failures.WithLabelValues(reasonLabel(err)).Inc()
		if ctx.Err() == nil {
			t.log.Debug("piece failed", zap.Int("piece", a.Piece), zap.String("peer", a.From.ID),
				zap.String("reason", res.Error))
		}
		return fetchResult{a: a, res: res, refused: refused}
	}
	if err := t.writePiece(buf, a.Offset); err != nil {
		return fetchResult{a: a, res: res, fatal: fmt.Errorf("store piece %d: %w", a.Piece, err)}
	}
	if t.e.pcache.put(t, a.Piece, a.Offset, bp, len(buf)) {
		bp = nil
	}
	res.OK = true
	res.Bytes = a.Length
	t.log.Debug("piece stored", zap.Int("piece", a.Piece), zap.String("peer", a.From.ID),
		zap.Duration("received", received), zap.Duration("hashed", hashed-received),
		zap.Duration("stored", time.Since(start)-hashed))
	t.e.metrics.pieces.WithLabelValues("ok", from).Inc()
	t.e.metrics.bytes.WithLabelValues(from).Add(float64(a.Length))
	return fetchResult{a: a, res: res}
}

// fetchVerified fetches a's piece into buf and checks it against its
// digest: for an Arriving assignment, the digest the CDN sends at the end of
// the transfer, which it returns as the assignment's Digest. received, if
// set, is how long the bytes took to arrive.
func (e *Engine) fetchVerified(ctx context.Context, taskID taskid.ID, a schedapi.Assignment, buf []byte, received *time.Duration) (schedapi.Assignment, error) {
	start := time.Now()
	trailer, err := e.fetchPiece(ctx, taskID, a, buf)
	if received != nil {
		*received = time.Since(start)
	}
	if err != nil {
		return a, err
	}
	if a.Arriving {
		// The piece's digest comes from the CDN at the end of the
		// transfer; from here on it is the assignment's.
		if err := piece.ValidateDigest(digest.Digest(trailer)); err != nil {
			return a, fmt.Errorf("%w: %w", errBadTrailer, err)
		}
		a.Digest = trailer
	}
	if piece.Digest(buf) != digest.Digest(a.Digest) {
		return a, errDigestMismatch
	}
	return a, nil
}

// pieceFailure is the reason a failed fetch of a is reported with. An
// Arriving piece that did not arrive whole (the CDN's read from the origin
// failed, or the transfer did) is aborted: not the CDN's fault, and the
// piece is assigned again; one whose bytes or digest do not hold is
// corrupt, and the CDN checks its copy.
func pieceFailure(a schedapi.Assignment, err error) schedapi.FailureReason {
	r := failureKind(err)
	if a.Arriving && r != schedapi.ReasonCorrupt {
		return schedapi.ReasonAborted
	}
	return r
}

func (t *task) writePiece(p []byte, off int64) error {
	t.ioMu.RLock()
	defer t.ioMu.RUnlock()
	if t.w == nil {
		return errors.New("no ingest")
	}
	_, err := t.w.WriteAt(p, off)
	return err
}

// fetchPiece reads exactly len(buf) bytes of a piece from the assigned
// peer's upload server, within PieceTimeout and, not counting the time this
// peer's own rate limiters hold it back, within its deadline at
// PieceMinRate (Config.pieceDeadline): a source that trickles fails with
// errTooSlow long before the stall timer, and is reported for it.
//
// An Arriving assignment asks the CDN with schedapi.HeaderArriving: the
// body comes at the origin's pace (only PieceTimeout bounds it), and must
// end cleanly after exactly the piece's bytes; the digest the CDN sends in
// the schedapi.TrailerPieceDigest trailer is returned, unchecked.
func (e *Engine) fetchPiece(ctx context.Context, taskID taskid.ID, a schedapi.Assignment, buf []byte) (trailer string, err error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.PieceTimeout)
	defer cancel()
	if a.Arriving {
		return e.fetchArriving(ctx, taskID, a, buf)
	}
	var slow *slowGuard
	if d := e.cfg.pieceDeadline(a.Length); d < e.cfg.PieceTimeout {
		ctx, slow = newSlowGuard(ctx, d)
		defer func() {
			if slow.stop() && err != nil {
				err = errTooSlow
			}
		}()
	}
	resp, err := e.requestPiece(ctx, taskID, a)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	switch {
	case resp.ContentLength >= 0 && resp.ContentLength < a.Length:
		return "", errShortBody
	case resp.ContentLength > a.Length:
		return "", errLongBody
	}
	body := &limitedReader{ctx: ctx, r: resp.Body, limiters: e.limiters, slow: slow}
	if _, err := io.ReadFull(body, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			if resp.ContentLength == a.Length {
				// The right length was announced and the connection
				// broke: a transfer failure, not a lie.
				return "", errCutBody
			}
			return "", errShortBody
		}
		return "", err
	}
	if resp.ContentLength < 0 {
		// No length announced: the body must end right here.
		var one [1]byte
		if n, _ := io.ReadFull(resp.Body, one[:]); n > 0 {
			return "", errLongBody
		}
	}
	return "", nil
}

// requestPiece asks a's source for its range and returns a 206 response.
func (e *Engine) requestPiece(ctx context.Context, taskID taskid.ID, a schedapi.Assignment) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: a.From.Addr, Path: upload.Path(taskID)}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", httpx.FormatRange(a.Offset, a.Length))
	req.Header.Set(schedapi.HeaderPeer, e.self.ID)
	if a.Arriving {
		req.Header.Set(schedapi.HeaderArriving, "1")
	}
	e.keys.Set(req.Header)
	hc := e.httpClient
	if a.FromCDN {
		hc = e.cdnClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close()
		return nil, &statusError{resp.StatusCode}
	}
	return resp, nil
}

// fetchArriving reads an Arriving piece from the CDN: exactly len(buf)
// bytes, then the body's clean end and its trailer. A body cut anywhere
// before its end is errArrivingCut; one longer than the piece, or one that
// ends without a digest, is the CDN's lie.
func (e *Engine) fetchArriving(ctx context.Context, taskID taskid.ID, a schedapi.Assignment, buf []byte) (string, error) {
	if !a.FromCDN {
		return "", errors.New("arriving piece assigned from a peer")
	}
	resp, err := e.requestPiece(ctx, taskID, a)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.ContentLength > a.Length {
		return "", errLongBody
	}
	body := &limitedReader{ctx: ctx, r: resp.Body, limiters: e.limiters}
	if _, err := io.ReadFull(body, buf); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("%w: %w", errArrivingCut, err)
	}
	// The trailer comes with the body's end.
	var one [1]byte
	switch n, err := io.ReadFull(resp.Body, one[:]); {
	case n > 0:
		return "", errLongBody
	case !errors.Is(err, io.EOF):
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("%w: %w", errArrivingCut, err)
	}
	d := resp.Trailer.Get(schedapi.TrailerPieceDigest)
	if d == "" {
		return "", fmt.Errorf("%w: none", errBadTrailer)
	}
	return d, nil
}

// limitedReader reads through rate limiters. The time it waits for them is
// added to slow's deadline: the source is not to blame for it.
type limitedReader struct {
	ctx      context.Context
	r        io.Reader
	limiters []*rate.Limiter
	slow     *slowGuard
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if len(l.limiters) == 0 {
		return l.r.Read(p)
	}
	if len(p) > readChunk {
		p = p[:readChunk]
	}
	n, err := l.r.Read(p)
	if n > 0 {
		start := time.Now()
		werr := waitLimiters(l.ctx, l.limiters, n)
		l.slow.extend(time.Since(start))
		if werr != nil {
			return n, werr
		}
	}
	return n, err
}

// slowGuard cancels a piece fetch whose deadline passes. The deadline can
// be pushed back (extend) by time the fetch spent waiting on this peer's
// own limiters. One timer per piece; nothing on the read path without
// limiters.
type slowGuard struct {
	cancel   context.CancelCauseFunc
	mu       sync.Mutex
	timer    *time.Timer
	deadline time.Time
}

// newSlowGuard returns a context that is cancelled with errTooSlow when d
// has passed, unless extended or stopped.
func newSlowGuard(ctx context.Context, d time.Duration) (context.Context, *slowGuard) {
	ctx, cancel := context.WithCancelCause(ctx)
	g := &slowGuard{cancel: cancel, deadline: time.Now().Add(d)}
	g.timer = time.AfterFunc(d, func() { cancel(errTooSlow) })
	return ctx, g
}

// extend pushes the deadline back by d. A nil guard does nothing.
func (g *slowGuard) extend(d time.Duration) {
	if g == nil || d <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.deadline = g.deadline.Add(d)
	if g.timer.Stop() {
		g.timer.Reset(time.Until(g.deadline))
	}
}

// stop releases the guard and reports whether its deadline had fired.
func (g *slowGuard) stop() bool {
	g.mu.Lock()
	fired := !g.timer.Stop()
	g.mu.Unlock()
	g.cancel(nil)
	return fired
}

// waitLimiters takes n tokens from every limiter, in chunks a limiter's
// burst allows.
func waitLimiters(ctx context.Context, ls []*rate.Limiter, n int) error {
	for _, l := range ls {
		if l.Limit() == rate.Inf {
			continue
		}
		burst := max(l.Burst(), 1)
		for left := n; left > 0; {
			c := min(left, burst)
			if err := l.WaitN(ctx, c); err != nil {
				return err
			}
			left -= c
		}
	}
	return nil
}

// failureKind classifies a piece failure for the supernode's strike rules.
func failureKind(err error) schedapi.FailureReason {
	var se *statusError
	switch {
	case errors.Is(err, errDigestMismatch), errors.Is(err, errShortBody), errors.Is(err, errLongBody), errors.Is(err, errBadTrailer):
		return schedapi.ReasonCorrupt
	case errors.As(err, &se) && (se.code == http.StatusNotFound || se.code == http.StatusRequestedRangeNotSatisfiable):
		return schedapi.ReasonMissing
	case errors.Is(err, context.Canceled):
		return schedapi.ReasonAborted
	}
	return schedapi.ReasonTransfer
}

// failureReason names a piece failure in words, for logs: "digest
// mismatch", "short body", "long body", "timeout", "connection refused",
// "status 404", ...
func failureReason(err error) string {
	var se *statusError
	var ne net.Error
	switch {
	case errors.Is(err, errDigestMismatch), errors.Is(err, errShortBody), errors.Is(err, errLongBody), errors.Is(err, errCutBody),
		errors.Is(err, errTooSlow):
		return err.Error()
	case errors.Is(err, errBadTrailer):
		return errBadTrailer.Error()
	case errors.Is(err, errArrivingCut):
		return errArrivingCut.Error()
	case errors.As(err, &se):
		return se.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, netpolicy.ErrDenied):
		return "refused by the outbound policy"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return redact.Truncate(err.Error())
}

// reasonLabel is failureReason with a bounded set of values, for metrics.
func reasonLabel(err error) string {
	var se *statusError
	if errors.As(err, &se) {
		return "status"
	}
	switch r := failureReason(err); r {
	case "digest mismatch", "short body", "long body", "body cut short", "too slow", "timeout", "connection refused", "connection reset", "canceled",
		"refused by the outbound policy", "bad piece digest trailer", "arriving piece cut short":
		return r
	}
	return "other"
}
