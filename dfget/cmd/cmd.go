// Package cmd is the dfget command: it parses the command line, wires a
// content store, the peer engine and an upload server, downloads one URL
// and writes it atomically to the output file.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"golang.org/x/term"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/version"
)

// Option configures Run.
type Option func(*runOptions)

type runOptions struct {
	logger     *zap.Logger
	httpClient *http.Client
	lookupEnv  func(string) (string, bool)
}

// WithLogger sets the logger instead of one built from --log-level and
// --log-format.
func WithLogger(l *zap.Logger) Option {
	return func(o *runOptions) { o.logger = l }
}

// WithHTTPClient sets the HTTP client for the supernode, other peers and the
// source.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *runOptions) { o.httpClient = hc }
}

// withEnv replaces the environment lookup, for tests.
func withEnv(fn func(string) (string, bool)) Option {
	return func(o *runOptions) { o.lookupEnv = fn }
}

// progressEvery is how often the progress bar is redrawn on a terminal;
// plainProgressEvery how often a progress line is written elsewhere.
const (
	progressEvery      = 200 * time.Millisecond
	plainProgressEvery = 5 * time.Second
)

// Run runs dfget with args (without the program name). Progress and notices
// go to stderr, --help and --version to stdout. The error, if any, is one
// line for the user; it wraps ErrUsage for command-line mistakes. Run keeps
// no global state and may run many times at once in one process.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, opts ...Option) error {
	o, fs, err := parseArgs(args)
	if err != nil {
		return err
	}
	if o.help {
		printUsage(stdout, fs)
		return nil
	}
	if o.version {
		fmt.Fprintln(stdout, version.String("dfget"))
		return nil
	}
	rc := runOptions{lookupEnv: os.LookupEnv}
	for _, opt := range opts {
		opt(&rc)
	}
	logger := rc.logger
	if logger == nil {
		if logger, err = log.New(o.log, stderr); err != nil {
			return usagef("%v", err)
		}
		defer func() { _ = logger.Sync() }()
	}
	return run(ctx, o, rc, logger, stderr)
}

func run(ctx context.Context, o *flags, rc runOptions, logger *zap.Logger, stderr io.Writer) (err error) {
	out, err := filepath.Abs(o.output)
	if err != nil {
		return fmt.Errorf("output %s: %w", o.output, err)
	}
	if fi, err := os.Stat(out); err == nil && fi.IsDir() {
		return fmt.Errorf("output %s is a directory", out)
	}
	if fi, err := os.Stat(filepath.Dir(out)); err != nil || !fi.IsDir() {
		return fmt.Errorf("output directory %s does not exist", filepath.Dir(out))
	}

	keys, _, err := clusterauth.Config{FlagFile: o.tokenFile}.Load(rc.lookupEnv)
	if err != nil {
		return fmt.Errorf("%w: dfget needs the supernode's cluster token (its <data-dir>/%s): set $%s or --cluster-token-file", err, clusterauth.FileName, clusterauth.EnvToken)
	}

	dataDir := o.dataDir
	if dataDir == "" {
		var release func()
		dataDir, release, err = newDataDir(out, logger)
		if err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
		defer release()
	}
	if err := command.CheckDataDir(dataDir); err != nil {
		return err
	}
	// Around the page cache, like dfdaemon (docs/benchmarks.md).
	store, err := local.New(dataDir, local.WithLogger(logger.Named("store")), local.WithDirectIO())
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	ln, err := net.Listen("tcp", o.peerListen)
	if err != nil {
		return fmt.Errorf("peer listen: %w", err)
	}
	self := schedapi.Peer{ID: peer.NewID("dfget"), Addr: net.JoinHostPort(advertiseIP(o, logger), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)),
		DownloadRate: downloadRate(o.localLimit, o.totalLimit)}
	logger = logger.With(zap.String("peer", self.ID))

	scOpts := []schedclient.Option{schedclient.WithLogger(logger.Named("schedclient")), schedclient.WithClusterKeys(keys)}
	engOpts := []peer.Option{peer.WithLogger(logger.Named("peer"))}
	upOpts := []upload.Option{upload.WithLogger(logger.Named("upload"))}
	if rc.httpClient != nil {
		scOpts = append(scOpts, schedclient.WithHTTPClient(rc.httpClient))
		engOpts = append(engOpts, peer.WithHTTPClient(rc.httpClient))
	} else {
		outOpts, err := outboundOptions(o, o.engineConfig(), logger)
		if err != nil {
			_ = ln.Close()
			return err
		}
		engOpts = append(engOpts, outOpts...)
	}
	if o.totalLimit > 0 {
		total := ratelimit.NewLimiter(o.totalLimit)
		engOpts = append(engOpts, peer.WithDownloadLimiter(total))
		upOpts = append(upOpts, upload.WithLimiter(total))
	}
	if o.localLimit > 0 {
		engOpts = append(engOpts, peer.WithDownloadLimiter(ratelimit.NewLimiter(o.localLimit)))
	}
	sc, err := schedclient.New(o.supernodes, scOpts...)
	if err != nil {
		_ = ln.Close()
		return usagef("--node: %v", err)
	}
	eng, err := peer.New(o.engineConfig(), store, sc, self, engOpts...)
	if err != nil {
		_ = ln.Close()
		return err
	}

	// Serve pieces to others while downloading.
	srvCtx, stopServers := context.WithCancel(context.WithoutCancel(ctx))
	var g errgroup.Group
	g.Go(func() error { return upload.New(eng, keys, upOpts...).Run(srvCtx, ln) })
	g.Go(func() error { return eng.Run(srvCtx) })
	defer func() {
		stopServers()
		if serr := g.Wait(); serr != nil {
			logger.Debug("stop servers", zap.Error(serr))
		}
	}()

	dctx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	return download(dctx, o, eng, store, out, stderr)
}

// download runs the engine's download, shows progress and moves the
// verified content to out.
func download(ctx context.Context, o *flags, eng *peer.Engine, store *local.Store, out string, stderr io.Writer) error {
	d, err := eng.Download(ctx, peer.Request{
		URL:          o.url,
		File:         o.btFile,
		Header:       o.header,
		Digest:       o.digest,
		Filter:       o.filter,
		Identifier:   o.identifier,
		BackToSource: !o.notbs && !o.torrent(),
	})
	if err != nil {
		return describe(err, o)
	}
	defer d.Close()

	bar := !o.quiet && isTerminal(stderr)
	start := time.Now()
	var tick <-chan time.Time
	switch {
	case bar:
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		tick = t.C
	case !o.quiet:
		// Not a terminal: a plain line now and then, for logs.
		t := time.NewTicker(plainProgressEvery)
		defer t.Stop()
		tick = t.C
	}
	notice := func(ev peer.Event) {
		if o.quiet {
			return
		}
		var line string
		switch ev.Kind {
		case peer.EventFallback:
			line = fmt.Sprintf("dfget: P2P failed (%s), downloading from source", p2pReason(ev.Err, ev.Reason, o))
		case peer.EventUnreachable, peer.EventReachable, peer.EventRateLimited:
			if bar {
				return // the progress line says it
			}
			line = "dfget: " + eventNotice(ev, o)
		default:
			return
		}
		if bar {
			fmt.Fprint(stderr, "\r\x1b[K")
		}
		fmt.Fprintln(stderr, line)
	}
	// With --range the output is the range, written once its bytes are
	// verified; the download ends with it.
	var ranged <-chan rangeResult
	done := d.Done()
	if o.rng != "" {
		ch := make(chan rangeResult, 1)
		go func() {
			cr, err := writeRange(ctx, d, o.rng, out)
			ch <- rangeResult{cr, err}
		}()
		ranged = ch
	}
	var rangeRes rangeResult
	events := d.Events()
loop:
	for {
		select {
		case rangeRes = <-ranged:
			break loop
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			notice(ev)
		case <-tick:
			p := d.Progress()
			if bar {
				fmt.Fprintf(stderr, "\r%s\x1b[K", renderProgress(p, time.Since(start), renderStatus(p, time.Now()), termWidth(stderr)-1))
			} else {
				fmt.Fprintf(stderr, "dfget: %s\n", renderProgress(p, time.Since(start), renderStatus(p, time.Now()), 0))
			}
		case <-done:
			if ranged != nil {
				done = nil // the range's reader ends with the download's error, if any
				continue
			}
			break loop
		case <-ctx.Done():
			if ranged != nil {
				rangeRes = <-ranged // its reader ends with ctx
			}
			break loop
		}
	}
	if ranged != nil {
		return finishRange(ctx, d, o, out, rangeRes, bar, start, stderr)
	}
	res, err := d.Wait(ctx)
	if events != nil && err == nil {
		for ev := range events { // closed once the download is done
			notice(ev)
		}
	}
	if bar {
		fmt.Fprintf(stderr, "\r%s\x1b[K\n", renderProgress(d.Progress(), time.Since(start), "", termWidth(stderr)-1))
	}
	if err == nil && !o.quiet {
		fmt.Fprintln(stderr, renderSummary(d.Progress(), time.Since(start)))
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return describe(err, o)
	}
	if err := store.Export(ctx, res.Digest, out, true); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// cliError is an error with a message for the user; it still unwraps to the
// cause.
type cliError struct {
	msg string
	err error
}

func (e *cliError) Error() string { return e.msg }
func (e *cliError) Unwrap() error { return e.err }

// describe turns a download error into one clear line.
func describe(err error, o *flags) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded) && o.timeout > 0:
		return &cliError{fmt.Sprintf("timed out after %s", o.timeout), err}
	case errors.Is(err, context.Canceled):
		return &cliError{"interrupted", err}
	case errors.Is(err, peer.ErrP2PFailed) && o.torrent():
		return &cliError{"P2P failed: " + p2pReason(err, err.Error(), o) + "; " + noTorrentSource, err}
	case errors.Is(err, peer.ErrP2PFailed) && o.notbs:
		return &cliError{p2pReason(err, err.Error(), o) + " and --notbs set", err}
	case errors.Is(err, peer.ErrP2PFailed):
		return &cliError{"P2P failed: " + p2pReason(err, err.Error(), o), err}
	}
	return err
}

// noTorrentSource ends the error of a torrent P2P could not download.
const noTorrentSource = "a torrent is only downloaded through the supernode: dfget has no BitTorrent client (the supernode's is the only one), so it does not go to the source"

// p2pReason says briefly why P2P failed, naming the supernode when it could
// not be reached.
func p2pReason(err error, fallback string, o *flags) string {
	if errors.Is(err, schedclient.ErrUnreachable) {
		msg := fmt.Sprintf("supernode %s unreachable", strings.Join(o.supernodes, ","))
		if errors.Is(err, peer.ErrStalled) {
			msg = fmt.Sprintf("no piece verified for %s, %s", o.engineConfig().ApplyDefaults().StallTimeout, msg)
		}
		return msg
	}
	return strings.TrimPrefix(fallback, peer.ErrP2PFailed.Error()+": ")
}

// engineConfig is the peer engine's configuration from the command line.
func (o *flags) engineConfig() peer.Config {
	return peer.Config{PieceTimeout: o.pieceTimeout, StallTimeout: o.stallTimeout, PieceMinRate: ratelimit.Rate(o.pieceMinRate)}
}

// eventNotice renders an event of the download for a notice line.
func eventNotice(ev peer.Event, o *flags) string {
	switch ev.Kind {
	case peer.EventUnreachable:
		return fmt.Sprintf("supernode %s unreachable (%s), retrying; P2P gives up after %s without progress",
			ev.Node, ev.Reason, o.engineConfig().ApplyDefaults().StallTimeout)
	case peer.EventReachable:
		return fmt.Sprintf("supernode %s reachable again", ev.Node)
	case peer.EventRateLimited:
		return "the origin is rate-limiting; waiting for the supernode's CDN to retry it"
	}
	return ev.String()
}

// renderStatus is what the progress line adds while the download waits:
// the supernode it cannot reach, or the origin's rate limit.
func renderStatus(p peer.Progress, now time.Time) string {
	switch {
	case p.Unreachable != "":
		return fmt.Sprintf(" - supernode %s unreachable for %s", p.Unreachable, now.Sub(p.UnreachableSince).Round(time.Second))
	case !p.RetryAfter.IsZero():
		return fmt.Sprintf(" - origin rate-limited, retrying in %s", max(p.RetryAfter.Sub(now), 0).Round(time.Second))
	}
	return ""
}

// advertiseIP is the IP other peers reach this one at (peer.AdvertiseIP),
// 127.0.0.1 when the way to the supernode cannot be found.
func advertiseIP(o *flags, logger *zap.Logger) string {
	ip, err := peer.AdvertiseIP(o.advertiseIP, o.peerListen, o.supernodes[0])
	if err != nil {
		logger.Warn("find the local address towards the supernode; advertising 127.0.0.1", zap.Error(err))
		return "127.0.0.1"
	}
	return ip
}

// termWidth is the terminal's width in columns, 80 when it cannot be read.
func termWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			return cols
		}
	}
	return 80
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// downloadRate is the most this dfget receives per second under its
// limits (each 0 when unset), 0 when neither is set.
func downloadRate(local, total int64) int64 {
	switch {
	case local > 0 && total > 0:
		return min(local, total)
	case local > 0:
		return local
	default:
		return max(total, 0)
	}
}
