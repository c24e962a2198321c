package main

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// throttleChunk is the most bytes a throttle or a throttled reader moves at
// once; the limiters' bursts are at least this.
const throttleChunk = 32 << 10

// newByteLimiter returns a limiter of bps bytes per second with a burst of
// 20ms of bytes, at least one chunk. A burst of just one chunk (1.6ms at
// 20 MB/s) threw away the tokens of every wait the scheduler woke more than
// that late: on a busy machine a link of 20 MB/s ran 5-15% slower.
func newByteLimiter(bps int64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bps), int(max(bps/50, throttleChunk)))
}

// throttle is a TCP proxy in front of a server: it forwards every
// connection to the backend, and the bytes the backend sends back go
// through one rate limiter shared by all connections, and are counted. It
// is the origin's network link.
type throttle struct {
	ln      net.Listener
	backend string
	lim     *rate.Limiter
	sent    atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// startThrottle listens on 127.0.0.1:0 and forwards to backend at most bps
// bytes per second in total.
func startThrottle(backend string, bps int64) (*throttle, error) {
	return startThrottleOn("127.0.0.1", backend, bps)
}

// startThrottleOn listens on host:0; bps <= 0 only counts (-net netns,
// where the kernel shapes the origin's link).
func startThrottleOn(host, backend string, bps int64) (*throttle, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, err
	}
	t := &throttle{ln: ln, backend: backend, conns: map[net.Conn]struct{}{}}
	if bps > 0 {
		t.lim = newByteLimiter(bps)
	}
	t.wg.Add(1)
	go t.accept()
	return t, nil
}

// Addr is the throttled address.
func (t *throttle) Addr() string { return t.ln.Addr().String() }

// Sent is the bytes sent to clients since the start or the last Reset.
func (t *throttle) Sent() int64 { return t.sent.Load() }

// Reset zeroes the count.
func (t *throttle) Reset() { t.sent.Store(0) }

// Close stops accepting, ends every connection and waits for them.
func (t *throttle) Close() {
	_ = t.ln.Close()
	t.mu.Lock()
	for c := range t.conns {
		_ = c.Close()
	}
	t.conns = nil
	t.mu.Unlock()
	t.wg.Wait()
}

func (t *throttle) track(c net.Conn, add bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if add {
		if t.conns == nil {
			return false
		}
		t.conns[c] = struct{}{}
	} else if t.conns != nil {
		delete(t.conns, c)
	}
	return true
}

func (t *throttle) accept() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			return
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.forward(c)
		}()
	}
}

// forward copies the client's bytes to the backend as they come, and the
// backend's back through the limiter.
func (t *throttle) forward(c net.Conn) {
	defer c.Close()
	b, err := net.Dial("tcp", t.backend)
	if err != nil {
		return
	}
	defer b.Close()
	if !t.track(c, true) || !t.track(b, true) {
		return
	}
	defer t.track(c, false)
	defer t.track(b, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(b, c)
		closeWrite(b)
	}()
	_, _ = t.copy(ctx, c, b)
	closeWrite(c)
	// The client may still be sending a request body; a closed backend
	// ends that copy too.
	_ = b.Close()
	<-done
}

// copy moves src to dst through the limiter, counting what dst took.
func (t *throttle) copy(ctx context.Context, dst io.Writer, src io.Reader) (int64, error) {
	buf := make([]byte, throttleChunk)
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 && t.lim != nil {
			if err := t.lim.WaitN(ctx, n); err != nil {
				return total, err
			}
		}
		if n > 0 {
			// Counted before it is written, so that a client that has
			// the bytes never reads a count without them; what dst did not
			// take is taken off again.
			t.sent.Add(int64(n))
			m, werr := dst.Write(buf[:n])
			total += int64(m)
			t.sent.Add(int64(m - n))
			if werr != nil {
				return total, werr
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return total, nil
			}
			return total, rerr
		}
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = c.Close()
}

// throttledReader reads through a limiter: a client's download link.
type throttledReader struct {
	ctx context.Context
	r   io.Reader
	lim *rate.Limiter
}

func (t *throttledReader) Read(p []byte) (int, error) {
	if t.lim == nil {
		return t.r.Read(p)
	}
	if len(p) > throttleChunk {
		p = p[:throttleChunk]
	}
	n, err := t.r.Read(p)
	if n > 0 {
		if werr := t.lim.WaitN(t.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
