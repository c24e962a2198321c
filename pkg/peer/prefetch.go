package peer

import (
	"fmt"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/ratelimit"
)

// Prefetch says what a download fetches beyond the ranges its readers want
// now (Download.NewRangeReader with a length): the background fill of the
// rest of the content, at a lower priority than the wanted pieces. In YAML
// and on command lines it is "on" (the default: the whole content, as fast
// as the swarm allows), "off" (only what readers want; the content is then
// never committed, and stays in the ingest while the download lives), or a
// rate such as "20MiB/s" (the rest, at most that fast).
type Prefetch struct {
	// Off: only wanted pieces.
	Off bool
	// Rate caps the background fill, in bytes per second; 0: no cap.
	Rate ratelimit.Rate
}

// ParsePrefetch parses "on", "off" or a rate.
func ParsePrefetch(s string) (Prefetch, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "on":
		return Prefetch{}, nil
	case "off":
		return Prefetch{Off: true}, nil
	}
	r, err := ratelimit.Parse(s)
	if err != nil {
		return Prefetch{}, fmt.Errorf("prefetch %q: must be on, off or a rate such as 20MiB/s: %w", s, err)
	}
	return Prefetch{Rate: ratelimit.Rate(r)}, nil
}

// String renders p as ParsePrefetch reads it.
func (p Prefetch) String() string {
	switch {
	case p.Off:
		return "off"
	case p.Rate > 0:
		return p.Rate.String() + "/s"
	}
	return "on"
}

// MarshalText renders p as String does.
func (p Prefetch) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText parses p as ParsePrefetch does.
func (p *Prefetch) UnmarshalText(b []byte) error {
	v, err := ParsePrefetch(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// Set parses a command-line value (flag.Value).
func (p *Prefetch) Set(s string) error { return p.UnmarshalText([]byte(s)) }

// Type names the value for command-line help.
func (p *Prefetch) Type() string { return "prefetch" }

// bucket paces the background fill at a rate: a token bucket of bytes that
// may go into debt (a piece is taken whole) and holds at most a second's
// worth or one piece, whichever is more.
type bucket struct {
	rate   float64 // bytes per second
	tokens float64
	last   time.Time
}

func newBucket(rate int64, now time.Time) *bucket {
	return &bucket{rate: float64(rate), last: now}
}

func (b *bucket) refill(now time.Time, piece int64) {
	if now.After(b.last) {
		b.tokens += now.Sub(b.last).Seconds() * b.rate
		b.last = now
	}
	b.tokens = min(b.tokens, max(b.rate, float64(piece)))
}

// pieces returns how many pieces of size piece the bucket allows now, and,
// when none, how long until it allows one.
func (b *bucket) pieces(now time.Time, piece int64) (int, time.Duration) {
	b.refill(now, piece)
	if b.tokens >= float64(piece) {
		return int(b.tokens / float64(piece)), 0
	}
	need := float64(piece) - b.tokens // tokens may be in debt
	return 0, time.Duration(need / b.rate * float64(time.Second))
}

// take spends n bytes.
func (b *bucket) take(now time.Time, n, piece int64) {
	b.refill(now, piece)
	b.tokens -= float64(n)
}
