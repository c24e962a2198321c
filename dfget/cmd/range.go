package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer"
)

// rangeResult is what writeRange returns.
type rangeResult struct {
	contentRange string
	err          error
}

// finishRange ends the progress output of a --range download and reports
// its result.
func finishRange(ctx context.Context, d *peer.Download, o *flags, out string, res rangeResult, bar bool, start time.Time, stderr io.Writer) error {
	if bar {
		fmt.Fprintf(stderr, "\r%s\x1b[K\n", renderProgress(d.Progress(), time.Since(start), "", termWidth(stderr)-1))
	}
	err := res.err
	if err == nil {
		if !o.quiet {
			fmt.Fprintf(stderr, "dfget: %s written to %s\n", res.contentRange, out)
		}
		return nil
	}
	if errors.Is(err, httpx.ErrRangeUnsatisfiable) {
		return &cliError{msg: fmt.Sprintf("dfget: --range %s: %v", strings.TrimPrefix(o.rng, "bytes="), err), err: err}
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return describe(err, o)
}

// writeRange writes the bytes of d that the Range value rng selects to out,
// atomically: a temporary file beside it, synced, then renamed. It waits
// for the content's size, opens a range reader (its pieces are fetched
// first) and ends once the range's last byte is verified; a range covering
// the whole content is read to the end, which waits for the whole
// content's digest.
// It returns the range written as a Content-Range value.
func writeRange(ctx context.Context, d *peer.Download, rng, out string) (cr string, err error) {
	size, err := d.Size(ctx)
	if err != nil {
		return "", err
	}
	r, err := httpx.ParseRange(rng, size)
	if err != nil {
		return "", err
	}
	n := r.Length
	if r.Start == 0 && r.Length == size {
		n = -1
	}
	rr := d.NewRangeReader(r.Start, n)
	defer rr.Close()
	stop := context.AfterFunc(ctx, func() { _ = rr.Close() })
	defer stop()

	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".range-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", out, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	got, err := io.Copy(tmp, io.LimitReader(rr, r.Length))
	if err != nil {
		return "", err
	}
	if got != r.Length {
		return "", fmt.Errorf("range %s: %d of %d bytes: %w", r.ContentRange(size), got, r.Length, io.ErrUnexpectedEOF)
	}
	if n < 0 { // the whole content: its reader ends once the digest is verified
		if _, err := io.Copy(io.Discard, rr); err != nil {
			return "", err
		}
	}
	if err := tmp.Chmod(0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", out, err)
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("write %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("write %s: %w", out, err)
	}
	return r.ContentRange(size), nil
}
