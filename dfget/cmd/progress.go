package cmd

import (
	"fmt"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/peer"
)

// barWidth is the number of cells of the progress bar.
const barWidth = 24

// renderProgress renders one progress line: bar, percent, bytes, average
// rate, ETA and where the bytes came from. It is a pure function of its
// arguments. A size below zero is unknown: no bar, percent or ETA.
func renderProgress(p peer.Progress, elapsed time.Duration) string {
	var b strings.Builder
	var rate float64
	if elapsed > 0 {
		rate = float64(p.Completed) / elapsed.Seconds()
	}
	if p.Size >= 0 {
		frac := 1.0
		if p.Size > 0 {
			frac = min(float64(p.Completed)/float64(p.Size), 1)
		}
		full := int(frac * barWidth)
		b.WriteByte('[')
		b.WriteString(strings.Repeat("=", full))
		if full < barWidth {
			b.WriteByte('>')
			b.WriteString(strings.Repeat(" ", barWidth-full-1))
		}
		fmt.Fprintf(&b, "] %5.1f%% %s/%s", frac*100, humanBytes(p.Completed), humanBytes(p.Size))
	} else {
		b.WriteString(humanBytes(p.Completed))
	}
	fmt.Fprintf(&b, " %s/s", humanBytes(int64(rate)))
	if p.Size >= 0 {
		left := p.Size - p.Completed
		switch {
		case left <= 0:
			b.WriteString(" ETA 0s")
		case rate > 0:
			eta := time.Duration(float64(left) / rate * float64(time.Second))
			fmt.Fprintf(&b, " ETA %s", eta.Round(time.Second))
		default:
			b.WriteString(" ETA --")
		}
	}
	if got := p.FromPeers + p.FromCDN + p.FromSource; got > 0 {
		fmt.Fprintf(&b, " (peers %d%%, cdn %d%%, source %d%%)",
			percent(p.FromPeers, got), percent(p.FromCDN, got), percent(p.FromSource, got))
	}
	return b.String()
}

func percent(part, whole int64) int64 {
	return (part*100 + whole/2) / whole
}

// humanBytes renders n bytes with binary units: 512 B, 1.5 KiB, 20.0 MiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
