package main

// The lazy suite's reads and what it makes of them: one range GET checked
// against the blob's bytes, the ranges a run reads, the wait for a
// background fill to settle, and the tables it prints (lazy.go runs them).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/damselfly/damselfly/pkg/httpx"
)

// rangeRead is one range GET.
type rangeRead struct {
	rg httpx.Range
	// first and last are when the first and the last body byte arrived,
	// since the request was sent.
	first, last time.Duration
	// err says why the read is not right: the request failed, the answer
	// was not a 206 of the range asked, or its bytes are not the blob's.
	err error
}

func (r rangeRead) right() bool { return r.err == nil }

// fmt formats d, one of r's times, or "-" when r is not right.
func (r rangeRead) fmt(d time.Duration) string {
	if !r.right() {
		return "-"
	}
	return fmtSec(d.Seconds())
}

// readRange GETs rg of url into buf (len(buf) == rg.Length) and checks
// the answer against want, the blob's bytes of rg. A read that takes
// longer than timeout fails.
func readRange(ctx context.Context, hc *http.Client, url string, rg httpx.Range, buf, want []byte, timeout time.Duration) rangeRead {
	res := rangeRead{rg: rg}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		res.err = err
		return res
	}
	req.Header.Set("Range", httpx.FormatRange(rg.Start, rg.Length))
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		res.err = fmt.Errorf("status %s, want 206: %s", resp.Status, bytes.TrimSpace(b))
		return res
	}
	if got, _, err := httpx.ParseContentRange(resp.Header.Get("Content-Range")); err != nil || got != rg {
		res.err = fmt.Errorf("content-range %q, want %q", resp.Header.Get("Content-Range"), rg.ContentRange(-1))
		return res
	}
	n := 0
	for n < len(buf) {
		m, err := resp.Body.Read(buf[n:])
		if m > 0 && n == 0 {
			res.first = time.Since(start)
		}
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			res.err = fmt.Errorf("after %d bytes: %w", n, err)
			return res
		}
	}
	res.last = time.Since(start)
	var extra [1]byte
	if m, _ := io.ReadFull(resp.Body, extra[:]); m > 0 {
		res.err = errors.New("longer than the range")
		return res
	}
	switch {
	case n < len(buf):
		res.err = fmt.Errorf("%d bytes, want %d", n, len(buf))
	case !bytes.Equal(buf, want):
		res.err = errors.New("not the blob's bytes")
	}
	return res
}

// randomRanges returns n ranges of length bytes at random offsets of a blob
// of size >= length bytes; a seed always gives the same ranges.
func randomRanges(seed uint64, size, length int64, n int) []httpx.Range {
	r := mrand.New(mrand.NewPCG(seed, 12))
	out := make([]httpx.Range, n)
	for i := range out {
		out[i] = httpx.Range{Start: r.Int64N(size - length + 1), Length: length}
	}
	return out
}

// splitRanges returns k contiguous ranges covering size bytes, the first
// ones a byte longer when k does not divide size.
func splitRanges(size int64, k int) []httpx.Range {
	out := make([]httpx.Range, 0, k)
	var start int64
	for i := range int64(k) {
		n := size / int64(k)
		if i < size%int64(k) {
			n++
		}
		if n > 0 {
			out = append(out, httpx.Range{Start: start, Length: n})
		}
		start += n
	}
	return out
}

// scenarioOffset is where scenario (a) reads its range: 200 MiB into a
// 256 MiB blob, the same fraction of other sizes, on a MiB.
func scenarioOffset(sizeMiB int) int64 { return int64(sizeMiB*200/256) * mib }

// waitSettled polls sent every poll until it has not changed for quiet or
// limit has passed, and returns how long it waited and whether it settled.
func waitSettled(ctx context.Context, sent func() int64, poll, quiet, limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	last, since := sent(), start
	for {
		now := time.Now()
		if now.Sub(since) >= quiet {
			return since.Sub(start), true
		}
		if now.Sub(start) >= limit {
			return now.Sub(start), false
		}
		select {
		case <-ctx.Done():
			return time.Since(start), false
		case <-time.After(poll):
		}
		if v := sent(); v != last {
			last, since = v, time.Now()
		}
	}
}

func readErrors(direct, dfd rangeRead) string {
	var b strings.Builder
	if direct.err != nil {
		fmt.Fprintf(&b, " [direct: %v]", direct.err)
	}
	if dfd.err != nil {
		fmt.Fprintf(&b, " [dfdaemon: %v]", dfd.err)
	}
	return b.String()
}

// seconds returns f of each right read, in seconds.
func seconds(rs []rangeRead, f func(rangeRead) time.Duration) []float64 {
	var out []float64
	for _, r := range rs {
		if r.right() {
			out = append(out, f(r).Seconds())
		}
	}
	return out
}

func maxOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return slices.Max(xs)
}

func rightCount(rs []rangeRead) string {
	n := 0
	for _, r := range rs {
		if r.right() {
			n++
		}
	}
	return fmt.Sprintf("%d/%d", n, len(rs))
}

func fmtSec(s float64) string { return fmt.Sprintf("%.3fs", s) }

// fmtSecs formats agg of xs, or "-" for none.
func fmtSecs(xs []float64, agg func([]float64) float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmtSec(agg(xs))
}

func fmtRatio(a, b float64) string {
	if b <= 0 || a <= 0 {
		return "-"
	}
	if r := a / b; r < 10 {
		return fmt.Sprintf("%.2fx", r)
	}
	return fmt.Sprintf("%.0fx", a/b)
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

// table is a titled table printed as aligned text or as Markdown.
type table struct {
	title  string
	header []string
	rows   [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) writeText(w io.Writer) {
	fmt.Fprintln(w, t.title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range append([][]string{t.header}, t.rows...) {
		fmt.Fprintln(tw, "  "+strings.Join(r, "\t")+"\t")
	}
	tw.Flush()
}

func (t *table) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "**%s**\n\n", t.title)
	line := func(cells []string) {
		esc := make([]string, len(cells))
		for i, c := range cells {
			esc[i] = strings.ReplaceAll(c, "|", `\|`)
		}
		fmt.Fprintf(&b, "| %s |\n", strings.Join(esc, " | "))
	}
	line(t.header)
	sep := make([]string, len(t.header))
	for i := range sep {
		sep[i] = "---"
	}
	line(sep)
	for _, r := range t.rows {
		line(append(r, make([]string, max(0, len(t.header)-len(r)))...))
	}
	return b.String()
}
