package backoff

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Pauses double from Min up to Max, each drawn from the upper half of its
// step, and start again from Min after Reset.
func TestBackoffJitter(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: 100 * time.Millisecond, Max: 400 * time.Millisecond}
	for _, hi := range []time.Duration{100, 200, 400, 400} {
		d := b.Next()
		hi *= time.Millisecond
		require.True(t, d >= hi/2 && d <= hi, "%s not in [%s, %s]", d, hi/2, hi)
	}
	b.Reset()
	require.LessOrEqual(t, b.Next(), 100*time.Millisecond)
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[Jitter(time.Second)] = true
	}
	require.Greater(t, len(seen), 1, "jittered")
}
