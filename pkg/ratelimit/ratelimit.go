// Package ratelimit parses byte rates such as 20M or 512KiB/s (a size in
// pkg/bytesize's grammar, per second) and builds the
// token-bucket limiters that pace a peer's piece downloads
// (peer.WithDownloadLimiter) and uploads (upload.WithLimiter). dfget's
// --locallimit and --totallimit and dfdaemon's rateLimit block share it.
package ratelimit

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/time/rate"
	"gopkg.in/yaml.v3"

	"github.com/damselfly/damselfly/pkg/bytesize"
)

// maxRate bounds a parsed rate (1 PiB/s), far above any link.
const maxRate = 1 << 50

// Parse parses a byte rate: a size in the one size grammar
// (bytesize.Parse: "20M", "512KiB", "1.5G", "1048576"), optionally followed
// by "/s". A rate is a size per second. It must be at least 1 byte/s and at
// most 1 PiB/s.
func Parse(s string) (int64, error) {
	v := strings.TrimSpace(s)
	if n := len(v); n >= 2 && strings.EqualFold(v[n-2:], "/s") {
		v = v[:n-2]
	}
	if v == "" {
		return 0, fmt.Errorf("rate %q: empty", s)
	}
	n, err := bytesize.Parse(v)
	if err != nil {
		return 0, fmt.Errorf("rate %q: want a size per second such as 20M or 512KiB/s", s)
	}
	if n < 1 || n > maxRate {
		return 0, fmt.Errorf("rate %q: out of range", s)
	}
	return int64(n), nil
}

// NewLimiter returns a limiter of bps bytes per second whose burst allows
// reads of a useful size: a tenth of a second's worth, between 16 KiB and
// 4 MiB, never more than bps. It returns nil (no limit) for bps <= 0; the
// peer engine and the upload server take nil as unlimited.
func NewLimiter(bps int64) *rate.Limiter {
	if bps <= 0 {
		return nil
	}
	burst := min(max(bps/10, 16<<10), 4<<20)
	burst = min(burst, bps)
	return rate.NewLimiter(rate.Limit(bps), int(burst))
}

// Rate is a configured byte rate in bytes per second; 0 means unlimited.
// In YAML and on command lines it is written as Parse reads it, or 0.
type Rate int64

// ParseRate parses s as Parse does, and also takes "0" (unlimited).
func ParseRate(s string) (Rate, error) {
	if strings.TrimSpace(s) == "0" {
		return 0, nil
	}
	n, err := Parse(s)
	return Rate(n), err
}

// Limiter returns the limiter for r: nil when r is 0.
func (r Rate) Limiter() *rate.Limiter { return NewLimiter(int64(r)) }

// String renders the rate with the largest binary unit that divides it,
// e.g. 16M; 0 for unlimited.
func (r Rate) String() string {
	n := int64(r)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Set parses a command-line value (flag.Value).
func (r *Rate) Set(s string) error {
	v, err := ParseRate(s)
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// MarshalText renders the rate as String does.
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses the rate as ParseRate does.
func (r *Rate) UnmarshalText(text []byte) error { return r.Set(string(text)) }

// UnmarshalYAML parses a YAML scalar as ParseRate does; errors name the
// line.
func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: a rate must be a number of bytes/s or a string such as 20M", n.Line)}}
	}
	if err := r.Set(n.Value); err != nil {
		// A TypeError: the decoder goes on and reports every other
		// problem of the file too.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	return nil
}
