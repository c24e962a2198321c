// Package backoff paces retry loops: exponential pauses with jitter, so that
// no loop spins and parties that failed together do not retry together.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff is the pause of a retry loop: it starts at Min, doubles after
// every failure up to Max, and each pause is drawn at random from its upper
// half (jitter), so that peers that failed together do not retry together.
// The zero value pauses for nothing; it is not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the pause before the next attempt and grows the following
// one.
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	}
	d := b.cur
	b.cur = min(b.cur*2, max(b.Max, b.Min))
	return Jitter(d)
}

// Reset starts again from Min, after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Jitter returns a random duration in [d/2, d].
func Jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return max(d, 0)
	}
	half := d / 2
	return half + rand.N(d-half+1)
}
