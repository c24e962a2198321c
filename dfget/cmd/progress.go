package cmd

import (
	"fmt"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/peer"
)

// Bar widths: the widest a bar gets, and the narrowest worth drawing.
const (
	maxBarWidth = 24
	minBarWidth = 8
)

// renderProgress renders one progress line of at most width columns (0:
// any): bar, percent, bytes, average rate, ETA and where the bytes came
// from, plus status (what the download waits for, or ""). What does not fit
// goes, least useful first: the sources' share, then the bar shrinks, then
// goes, then the line is cut. It is a pure function of its arguments. A
// size below zero is unknown: no bar, percent or ETA.
func renderProgress(p peer.Progress, elapsed time.Duration, status string, width int) string {
	var rate float64
	if elapsed > 0 {
		rate = float64(p.Completed) / elapsed.Seconds()
	}
	var frac float64
	var counts, eta string
	if p.Size >= 0 {
		frac = 1.0
		if p.Size > 0 {
			frac = min(float64(p.Completed)/float64(p.Size), 1)
		}
		counts = fmt.Sprintf("%5.1f%% %s/%s", frac*100, bytesize.Size(p.Completed).Approx(), bytesize.Size(p.Size).Approx())
		left := p.Size - p.Completed
		switch {
		case left <= 0:
			eta = " ETA 0s"
		case rate > 0:
			eta = fmt.Sprintf(" ETA %s", time.Duration(float64(left)/rate*float64(time.Second)).Round(time.Second))
		default:
			eta = " ETA --"
		}
	} else {
		counts = bytesize.Size(p.Completed).Approx()
	}
	core := counts + fmt.Sprintf(" %s/s", bytesize.Size(int64(rate)).Approx()) + eta
	sources := ""
	if got := p.FromPeers + p.FromCDN + p.FromSource; got > 0 {
		sources = fmt.Sprintf(" (peers %d%%, cdn %d%%, source %d%%)",
			percent(p.FromPeers, got), percent(p.FromCDN, got), percent(p.FromSource, got))
	}
	bar := func(cells int) string {
		if p.Size < 0 || cells < minBarWidth {
			return ""
		}
		full := int(frac * float64(cells))
		var b strings.Builder
		b.WriteByte('[')
		b.WriteString(strings.Repeat("=", full))
		if full < cells {
			b.WriteByte('>')
			b.WriteString(strings.Repeat(" ", cells-full-1))
		}
		b.WriteString("] ")
		return b.String()
	}
	if width <= 0 {
		return bar(maxBarWidth) + core + sources + status
	}
	for _, tail := range []string{sources + status, status, ""} {
		rest := len(core) + len(tail)
		if room := width - rest - 3; room >= minBarWidth || p.Size < 0 {
			if line := bar(min(room, maxBarWidth)) + core + tail; len(line) <= width {
				return line
			}
		}
		if rest <= width {
			return core + tail
		}
	}
	return core[:width]
}

// renderSummary is the line dfget ends a download with: size, time, rate
// and where the bytes came from.
func renderSummary(p peer.Progress, elapsed time.Duration) string {
	var rate float64
	if elapsed > 0 {
		rate = float64(p.Completed) / elapsed.Seconds()
	}
	s := fmt.Sprintf("dfget: %s in %s (%s/s)", bytesize.Size(p.Completed).Approx(), elapsed.Round(10*time.Millisecond), bytesize.Size(int64(rate)).Approx())
	if got := p.FromPeers + p.FromCDN + p.FromSource; got > 0 {
		s += fmt.Sprintf(", from peers %d%%, the CDN %d%%, the source %d%%",
			percent(p.FromPeers, got), percent(p.FromCDN, got), percent(p.FromSource, got))
	}
	return s
}

func percent(part, whole int64) int64 {
	return (part*100 + whole/2) / whole
}
