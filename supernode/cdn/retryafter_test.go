package cdn

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/source"
)

func TestRetryHolds(t *testing.T) {
	t.Parallel()
	var h retryHolds
	limited := &described{msg: "source answered 429 Too Many Requests", err: &source.StatusError{StatusCode: http.StatusTooManyRequests}}
	require.True(t, rateLimited(limited))
	require.True(t, rateLimited(&source.StatusError{StatusCode: http.StatusServiceUnavailable}))
	require.False(t, rateLimited(&source.StatusError{StatusCode: http.StatusNotFound}))
	require.False(t, rateLimited(errors.New("source answered 429 Too Many Requests")), "decided on types, not words")

	require.Zero(t, h.left("t"))
	h.note("t", limited)
	first := h.left("t")
	require.InDelta(t, baseRetryHold.Seconds(), first.Seconds(), 0.5)
	h.note("t", limited)
	require.InDelta(t, (2 * baseRetryHold).Seconds(), h.left("t").Seconds(), 0.5, "doubles while rate-limited")
	for range 10 {
		h.note("t", limited)
	}
	require.LessOrEqual(t, h.left("t"), maxRetryHold)
	h.note("t", errors.New("digest mismatch"))
	require.Zero(t, h.left("t"), "another failure is not held")
	h.note("u", limited)
	h.mu.Lock()
	e := h.m["u"]
	e.until = time.Now().Add(-3 * maxRetryHold)
	h.m["u"] = e
	h.mu.Unlock()
	h.note("v", limited)
	h.mu.Lock()
	_, kept := h.m["u"]
	h.mu.Unlock()
	require.False(t, kept, "old holds are forgotten")
}
