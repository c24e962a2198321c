package cmd

import (
	"fmt"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/bytesize"
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
		fmt.Fprintf(&b, "] %5.1f%% %s/%s", frac*100, bytesize.Size(p.Completed).Approx(), bytesize.Size(p.Size).Approx())
	} else {
		b.WriteString(bytesize.Size(p.Completed).Approx())
	}
	fmt.Fprintf(&b, " %s/s", bytesize.Size(int64(rate)).Approx())
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
