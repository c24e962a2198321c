package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"

	// The pull-through cache's storage.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// The swarm suite runs its origin and its pull-through cache as child
// processes of the bench binary itself (-serve origin|pullthrough), so that
// their CPU time and peak RSS can be read from /proc like the Damselfly
// binaries'. A child prints one JSON line on stdout once it serves.

const (
	swarmRepo = "bench/swarm"
	swarmTag  = "v1"
)

// originInfo is what the origin child reports on its control listener.
type originInfo struct {
	// URL is the registry behind the egress throttle.
	URL       string        `json:"url"`
	Repo      string        `json:"repo"`
	Tag       string        `json:"tag"`
	Manifest  digest.Digest `json:"manifest"`
	MediaType string        `json:"mediaType"`
	// ManifestSize is the manifest's length in bytes.
	ManifestSize int64 `json:"manifestSize"`
	// Blobs are the config and the layers.
	Blobs []ocispec.Descriptor `json:"blobs"`
}

// Size is the bytes of one pull of the image: manifest, config, layers.
func (i originInfo) Size() int64 {
	n := i.ManifestSize
	for _, b := range i.Blobs {
		n += b.Size
	}
	return n
}

// originStats are the origin's counters since the last reset.
type originStats struct {
	// Egress is every byte the throttle sent: bodies and headers.
	Egress int64 `json:"egress"`
	// BlobBytes is the blob body bytes the registry wrote.
	BlobBytes int64 `json:"blobBytes"`
	// BlobGETs and ManifestGETs count GETs.
	BlobGETs     int `json:"blobGETs"`
	ManifestGETs int `json:"manifestGETs"`
	Requests     int `json:"requests"`
}

type readyLine struct {
	Control string `json:"control,omitempty"`
	URL     string `json:"url,omitempty"`
}

// serveOrigin runs the origin: the embedded distribution registry with
// the image pushed, behind a throttle of -origin-rate.
func serveOrigin(ctx context.Context, o options) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	reg, err := registrytest.Start(ctx, registrytest.WithDir(o.serveDir))
	if err != nil {
		return err
	}
	defer reg.Close()
	sizes := make([]int64, len(o.layersMiB))
	for i, s := range o.layersMiB {
		sizes[i] = int64(s) * mib
	}
	img, err := reg.PushRandomImage(ctx, swarmRepo, swarmTag, sizes...)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	// -net netns: the kernel shapes the origin's link; the throttle counts.
	bps := int64(o.originRate)
	if o.net == netNetns {
		bps = 0
	}
	th, err := startThrottleOn(o.serveAddr, reg.Host, bps)
	if err != nil {
		return err
	}
	defer th.Close()
	reg.ResetStats()
	info := originInfo{
		URL: "http://" + th.Addr(), Repo: img.Repo, Tag: img.Tag, Manifest: img.Manifest, MediaType: img.MediaType,
		ManifestSize: int64(len(img.ManifestBody)), Blobs: img.Blobs(),
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) { httpx.WriteJSON(w, http.StatusOK, info) })
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		s := reg.Stats()
		st := originStats{Egress: th.Sent(), BlobBytes: s.BlobBytes, Requests: s.Requests}
		for _, n := range s.BlobGETs {
			st.BlobGETs += n
		}
		for _, n := range s.ManifestGETs {
			st.ManifestGETs += n
		}
		httpx.WriteJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /reset", func(w http.ResponseWriter, _ *http.Request) {
		reg.ResetStats()
		th.Reset()
		w.WriteHeader(http.StatusNoContent)
	})
	return serveChild(ctx, o.serveAddr, mux, func(addr string) readyLine { return readyLine{Control: addr, URL: info.URL} })
}

// servePullThrough runs the real distribution registry as a pull-through
// cache of -upstream (proxy.remoteurl), storage in -serve-dir.
func servePullThrough(ctx context.Context, o options) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.upstream == "" || o.serveDir == "" {
		return errors.New("-serve pullthrough needs -upstream and -serve-dir")
	}
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"filesystem":  configuration.Parameters{"rootdirectory": o.serveDir},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
		Proxy: configuration.Proxy{RemoteURL: o.upstream},
	}
	cfg.Log.Level = "error"
	cfg.HTTP.Secret = hex.EncodeToString(secret)
	logrus.SetLevel(logrus.ErrorLevel)
	app := handlers.NewApp(ctx, cfg)
	return serveChild(ctx, o.serveAddr, app, func(addr string) readyLine { return readyLine{URL: "http://" + addr} })
}

// serveChild serves h on host:0, prints the ready line and serves until
// ctx ends.
func serveChild(ctx context.Context, host string, h http.Handler, ready func(addr string) readyLine) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	b, err := json.Marshal(ready(ln.Addr().String()))
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	_ = srv.Close()
	return nil
}

// startChild runs this binary with -serve and args, and returns the process
// and its ready line.
func startChild(ctx context.Context, name string, args ...string) (*proc, readyLine, error) {
	return startChildIn(ctx, "", name, args...)
}

// startChildIn is startChild in network namespace ns ("": this one).
func startChildIn(ctx context.Context, ns, name string, args ...string) (*proc, readyLine, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, readyLine{}, err
	}
	p := &proc{name: name, stderr: &lockedBuffer{}}
	p.cmd = nsCommand(ns, self, args...)
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, readyLine{}, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, readyLine{}, fmt.Errorf("start %s: %w", name, err)
	}
	p.watch()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, out)
	}()
	var rl readyLine
	select {
	case line, ok := <-lines:
		if !ok {
			p.stop()
			return nil, rl, fmt.Errorf("%s exited: %s", name, p.stderr.String())
		}
		if err := json.Unmarshal([]byte(line), &rl); err != nil {
			p.stop()
			return nil, rl, fmt.Errorf("%s: ready line %q: %w", name, line, err)
		}
	case <-time.After(2 * time.Minute):
		p.stop()
		return nil, rl, fmt.Errorf("%s: not ready after 2m: %s", name, p.stderr.String())
	case <-ctx.Done():
		p.stop()
		return nil, rl, ctx.Err()
	}
	return p, rl, nil
}

// origin is the running origin child.
type origin struct {
	*proc
	control string
	info    originInfo
	// -net netns: the run's network, the origin in its namespace; the
	// control listener is reached through hc
	net *runNet
	hc  *http.Client
}

// startOrigin starts the origin, in rn's origin namespace when rn is set.
func startOrigin(ctx context.Context, o options, work string, rn *runNet) (*origin, error) {
	args := []string{"-serve", "origin", "-serve-dir", filepath.Join(work, "origin"),
		"-origin-rate", o.originRate.String(), "-layers", joinInts(o.layersMiB)}
	ns := ""
	if rn != nil {
		ns = rn.plan.origin.ns
		args = append(args, "-net", netNetns, "-serve-addr", rn.plan.origin.addr.String())
	}
	p, rl, err := startChildIn(ctx, ns, "origin", args...)
	if err != nil {
		return nil, err
	}
	org := &origin{proc: p, control: "http://" + rl.Control, net: rn, hc: nsHTTPClient(ns)}
	if err := getJSON(ctx, org.hc, org.control+"/info", &org.info); err != nil {
		p.stop()
		return nil, err
	}
	return org, nil
}

func (g *origin) stats(ctx context.Context) (originStats, error) {
	var s originStats
	err := getJSON(ctx, g.hc, g.control+"/stats", &s)
	return s, err
}

func (g *origin) reset(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.control+"/reset", nil)
	if err != nil {
		return err
	}
	resp, err := g.hc.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("reset origin stats: %s", resp.Status)
	}
	return nil
}

func getJSON(ctx context.Context, hc *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
