// Command stargz runs the stargz snapshotter library
// (github.com/containerd/stargz-snapshotter/service) as containerd's proxy
// snapshotter on a unix socket, for hack/e2e-lazy.sh: a lazy-pulling client
// whose registry requests go to dfdaemon's mirror.
//
//	stargz --address /tmp/w/stargz.sock --root /tmp/w/stargz \
//	    --mirror 127.0.0.1:5000=127.0.0.1:65001 --request-log /tmp/w/requests.jsonl
//
// containerd names it in its config:
//
//	[proxy_plugins.stargz]
//	  type = "snapshot"
//	  address = "/tmp/w/stargz.sock"
//
// Each --mirror REGISTRY=MIRROR makes the snapshotter fetch the blobs of
// REGISTRY's images from MIRROR over plain HTTP first (REGISTRY itself stays
// the fallback, as in the library's resolver). --request-log records every
// HTTP request the snapshotter sends to a registry or mirror (one JSON object
// a line: method, URL, Range, status, Content-Type, Content-Range, body bytes
// read), so a test can see which ranges it asked for and what came back.
//
// "stargz blobread" drives the library's remote blob reader alone (see
// blobread.go).
//
// The Debian package stargz-snapshotter ships only ctr-remote, and the
// module of the upstream daemon's command is not served by the module proxy;
// this is our own small daemon over the library module instead.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	rhttp "github.com/hashicorp/go-retryablehttp"
	"google.golang.org/grpc"
)

// mirrorFlag collects REGISTRY=MIRROR pairs.
type mirrorFlag map[string]string

func (m mirrorFlag) String() string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (m mirrorFlag) Set(s string) error {
	reg, mir, ok := strings.Cut(s, "=")
	reg, mir = strings.TrimSpace(reg), strings.TrimSpace(mir)
	if !ok || reg == "" || mir == "" {
		return fmt.Errorf("want REGISTRY=MIRROR (host:port each), got %q", s)
	}
	mir = strings.TrimPrefix(strings.TrimPrefix(mir, "http://"), "https://")
	if strings.Contains(mir, "/") || strings.Contains(reg, "/") {
		return fmt.Errorf("%q: REGISTRY and MIRROR are host:port, without a path", s)
	}
	m[reg] = mir
	return nil
}

type options struct {
	address, root, requestLog, logLevel string
	mirrors                             mirrorFlag
	singleRange                         bool
	backgroundFetch, prefetch           bool
	chunkSize                           int64
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "blobread" {
		if err := blobread(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "stargz blobread:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "stargz:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	o := options{mirrors: mirrorFlag{}}
	fs := flag.NewFlagSet("stargz", flag.ContinueOnError)
	fs.StringVar(&o.address, "address", "", "unix `socket` of the snapshotter's gRPC server (required)")
	fs.StringVar(&o.root, "root", "", "root `dir` of the snapshotter's state and caches (required)")
	fs.Var(o.mirrors, "mirror", "`REGISTRY=MIRROR`: fetch REGISTRY's blobs from MIRROR (host:port, plain HTTP) first; repeatable")
	fs.StringVar(&o.requestLog, "request-log", "", "append every registry request and its answer as a JSON line to `file`")
	fs.BoolVar(&o.singleRange, "single-range", false, "always ask for one range per request (the library's force_single_range_mode)")
	fs.BoolVar(&o.backgroundFetch, "background-fetch", false, "fetch whole layers in the background after mounting (the library's default; off here to keep pulls lazy)")
	fs.BoolVar(&o.prefetch, "prefetch", true, "prefetch what the image's landmark file names when mounting")
	fs.Int64Var(&o.chunkSize, "chunk-size", 0, "granularity in `bytes` of on-demand fetches (0: the library's default, 50000)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level` (trace, debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.address == "" || o.root == "" {
		return o, errors.New("--address and --root are required")
	}
	return o, nil
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	if err := log.SetLevel(o.logLevel); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx = log.WithLogger(ctx, log.L)

	if err := os.MkdirAll(o.root, 0o700); err != nil {
		return err
	}
	if err := service.Supported(o.root); err != nil {
		return fmt.Errorf("overlayfs under %s: %w", o.root, err)
	}

	cfg := config(o)
	var rec *recorder
	if o.requestLog != "" {
		f, err := os.OpenFile(o.requestLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		rec = &recorder{w: f}
	}
	hosts := recordedHosts(resolver.RegistryHostsFromConfig(resolver.Config(cfg.ResolverConfig)), rec)

	sn, err := service.NewStargzSnapshotterService(ctx, o.root, cfg, service.WithCustomRegistryHosts(hosts))
	if err != nil {
		return err
	}
	// Close unmounts every layer the snapshotter mounted.
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("closing the snapshotter")
		}
	}()

	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	if err := os.MkdirAll(filepath.Dir(o.address), 0o700); err != nil {
		return err
	}
	if err := os.Remove(o.address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.Listen("unix", o.address)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.G(ctx).WithField("address", o.address).WithField("root", o.root).
		WithField("mirrors", o.mirrors.String()).WithField("single_range", o.singleRange).Info("stargz snapshotter serving")

	select {
	case <-ctx.Done():
		log.G(ctx).Info("stopping")
		srv.GracefulStop()
		return nil
	case err := <-errc:
		return err
	}
}

// config is the library's configuration for o: each mirror in front of its
// registry over plain HTTP; lazy by default (no background fetch of whole
// layers).
func config(o options) *service.Config {
	cfg := &service.Config{}
	cfg.NoBackgroundFetch = !o.backgroundFetch
	cfg.NoPrefetch = !o.prefetch
	cfg.ForceSingleRangeMode = o.singleRange
	cfg.ChunkSize = o.chunkSize
	// The upstream daemon's default (a struct tag its config loader
	// applies): no in-memory copy of what the disk cache holds.
	cfg.Direct = true
	// The test images are ours: each layer's TOC digest is in the manifest
	// annotations, so verification stays on.
	cfg.ResolverConfig.Host = map[string]resolver.HostConfig{}
	for reg, mir := range o.mirrors {
		cfg.ResolverConfig.Host[reg] = resolver.HostConfig{
			Mirrors: []resolver.MirrorConfig{{Host: mir, Insecure: true}},
		}
	}
	return cfg
}

// recordedHosts wraps the HTTP transport of every host hosts returns so that
// rec sees each request. The retrying client stays the outer transport: the
// library tunes its retries by type.
func recordedHosts(hosts func(reference.Spec) ([]docker.RegistryHost, error), rec *recorder) func(reference.Spec) ([]docker.RegistryHost, error) {
	if rec == nil {
		return hosts
	}
	return func(ref reference.Spec) ([]docker.RegistryHost, error) {
		hs, err := hosts(ref)
		if err != nil {
			return nil, err
		}
		for i := range hs {
			if rt, ok := hs[i].Client.Transport.(*rhttp.RoundTripper); ok {
				inner := rt.Client.HTTPClient.Transport
				if inner == nil {
					inner = http.DefaultTransport
				}
				if _, done := inner.(*recordingTransport); !done {
					rt.Client.HTTPClient.Transport = &recordingTransport{inner: inner, rec: rec}
				}
			} else {
				hs[i].Client.Transport = &recordingTransport{inner: hs[i].Client.Transport, rec: rec}
			}
		}
		return hs, nil
	}
}

// entry is one line of the request log.
type entry struct {
	Time         time.Time `json:"time"`
	Method       string    `json:"method"`
	Host         string    `json:"host"`
	Path         string    `json:"path"`
	Query        string    `json:"query,omitempty"`
	Range        string    `json:"range,omitempty"`
	Status       int       `json:"status,omitempty"`
	ContentType  string    `json:"content_type,omitempty"`
	ContentRange string    `json:"content_range,omitempty"`
	Length       int64     `json:"content_length"`
	Bytes        int64     `json:"bytes"`
	Millis       int64     `json:"ms"`
	Error        string    `json:"error,omitempty"`
}

type recorder struct {
	mu sync.Mutex
	w  io.Writer
}

func (r *recorder) write(e entry) {
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, _ = r.w.Write(append(b, '\n'))
}

type recordingTransport struct {
	inner http.RoundTripper
	rec   *recorder
}

func (t *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	e := entry{
		Time: time.Now().UTC(), Method: req.Method, Host: req.URL.Host, Path: req.URL.Path,
		Query: req.URL.RawQuery, Range: req.Header.Get("Range"),
	}
	res, err := t.inner.RoundTrip(req)
	if err != nil {
		e.Error = err.Error()
		e.Millis = time.Since(e.Time).Milliseconds()
		t.rec.write(e)
		return nil, err
	}
	e.Status = res.StatusCode
	e.ContentType = res.Header.Get("Content-Type")
	e.ContentRange = res.Header.Get("Content-Range")
	e.Length = res.ContentLength
	if res.StatusCode/100 != 2 {
		// The library may drop an error answer without reading or closing
		// its body: recorded now, without the body's bytes.
		e.Millis = time.Since(e.Time).Milliseconds()
		t.rec.write(e)
		return res, nil
	}
	res.Body = &countingBody{ReadCloser: res.Body, e: e, rec: t.rec}
	return res, nil
}

// countingBody writes its request's entry (of a 2xx answer) once the body is
// read to its end or closed, with the bytes read.
type countingBody struct {
	io.ReadCloser
	e    entry
	rec  *recorder
	once sync.Once
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.e.Bytes += int64(n)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			b.e.Error = err.Error()
		}
		b.done()
	}
	return n, err
}

func (b *countingBody) Close() error {
	b.done()
	return b.ReadCloser.Close()
}

func (b *countingBody) done() {
	b.once.Do(func() {
		b.e.Millis = time.Since(b.e.Time).Milliseconds()
		b.rec.write(b.e)
	})
}
