package httpx

import "net/http"

// LazyWriter writes a response whose status line goes out with its first
// byte, so that a handler whose body fails before any byte can still answer
// with an error (or forward the request elsewhere). With Flush, every write
// is flushed: bytes go out as they are verified, not when a buffer fills.
type LazyWriter struct {
	W      http.ResponseWriter
	Status int
	Flush  bool
	// N counts the body bytes written.
	N       int64
	started bool
}

// Start sends the status line, once; a body that ends without a byte calls
// it before returning.
func (l *LazyWriter) Start() {
	if !l.started {
		l.started = true
		l.W.WriteHeader(l.Status)
	}
}

// Started reports whether the status line went out.
func (l *LazyWriter) Started() bool { return l.started }

func (l *LazyWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	l.Start()
	n, err := l.W.Write(p)
	l.N += int64(n)
	if err == nil && l.Flush {
		_ = http.NewResponseController(l.W).Flush()
	}
	return n, err
}
