// Command testregistry runs the embedded test registry (pkg/registrytest: the
// real distribution/v3 registry with filesystem storage) as a process, for
// scripts that drive real container runtimes against it (hack/e2e-runtimes.sh).
//
//	testregistry --listen 127.0.0.1:5000 --data-dir /tmp/reg \
//	    --push library/e2e:1 --layer-sizes 3MiB,4MiB,5MiB --info /tmp/reg.json
//
// Besides the registry it serves a control listener (--control-listen) with
//
//	GET  /_stats        the registry's counters as JSON (blob GETs per digest,
//	                    blob body bytes, manifest GETs per repo:ref, requests)
//	POST /_stats/reset  zeroes the counters
//	GET  /_images       the images pushed at start, with every descriptor
//	GET  /healthz       200 once the registry is up
//
// When --info is given, the same facts (registry and control addresses,
// pushed images) are written to that file atomically once everything is
// ready, so a script can wait for the file and read the ports from it.
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
	"syscall"
	"time"

	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "testregistry:", err)
		os.Exit(1)
	}
}

// Info is what --info and the control listener report.
type Info struct {
	// Registry is the registry's host:port.
	Registry string `json:"registry"`
	// Control is the control listener's host:port.
	Control string `json:"control"`
	// Realm is the token server's URL when --auth is set.
	Realm string `json:"realm,omitempty"`
	// Images are the images pushed at start.
	Images []Image `json:"images"`
}

// Image is a pushed image as the JSON of --info and /_images shows it.
type Image struct {
	Repo      string               `json:"repo"`
	Tag       string               `json:"tag"`
	Manifest  digest.Digest        `json:"manifest"`
	MediaType string               `json:"mediaType"`
	Config    ocispec.Descriptor   `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
}

type options struct {
	listen, controlListen string
	dataDir               string
	push                  []string
	layerSizes            []int64
	auth                  string
	info                  string
}

// run starts the registry and its control listener, and serves until ctx
// ends. ready, when not nil, is called with the Info once serving.
func run(ctx context.Context, args []string, stderr io.Writer, ready func(Info)) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}

	opts := []registrytest.Option{registrytest.WithListen(o.listen)}
	if o.dataDir != "" {
		if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
			return err
		}
		opts = append(opts, registrytest.WithDir(o.dataDir))
	}
	if o.auth != "" {
		user, pass, ok := strings.Cut(o.auth, ":")
		if !ok || user == "" {
			return fmt.Errorf("--auth %q: want user:password", o.auth)
		}
		opts = append(opts, registrytest.WithTokenAuth(map[string]string{user: pass}))
	}
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	reg, err := registrytest.Start(startCtx, opts...)
	if err != nil {
		return fmt.Errorf("start registry: %w", err)
	}
	defer reg.Close()

	info := Info{Registry: reg.Host, Realm: reg.Realm(), Images: []Image{}}
	for _, ref := range o.push {
		repo, tag, _ := strings.Cut(ref, ":")
		img, err := reg.PushRandomImage(startCtx, repo, tag, o.layerSizes...)
		if err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		info.Images = append(info.Images, Image{
			Repo: img.Repo, Tag: img.Tag, Manifest: img.Manifest, MediaType: img.MediaType,
			Config: img.Config, Layers: img.Layers,
		})
	}
	// Pushing is not what callers want to measure.
	reg.ResetStats()

	ln, err := net.Listen("tcp", o.controlListen)
	if err != nil {
		return fmt.Errorf("control listener: %w", err)
	}
	info.Control = ln.Addr().String()
	srv := &http.Server{Handler: controlHandler(reg, info), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()

	if o.info != "" {
		if err := writeInfo(o.info, info); err != nil {
			return err
		}
	}
	fmt.Fprintf(stderr, "testregistry: registry on http://%s, control on http://%s, %d image(s) pushed\n",
		info.Registry, info.Control, len(info.Images))
	if ready != nil {
		ready(info)
	}

	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return fmt.Errorf("control listener: %w", err)
	}
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("testregistry", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var push, sizes string
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "registry `host:port`")
	fs.StringVar(&o.controlListen, "control-listen", "127.0.0.1:0", "`host:port` of the control listener (/_stats, /_images)")
	fs.StringVar(&o.dataDir, "data-dir", "", "registry storage `dir` (default: a temporary directory removed at exit)")
	fs.StringVar(&push, "push", "", "comma-separated `repo:tag` list of images of random layers to push at start")
	fs.StringVar(&sizes, "layer-sizes", "3MiB,4MiB,5MiB", "comma-separated uncompressed `sizes` of the pushed layers (K, M, G suffixes are powers of 1024)")
	fs.StringVar(&o.auth, "auth", "", "put the registry behind Bearer token auth for `user:password`")
	fs.StringVar(&o.info, "info", "", "write the addresses and pushed images as JSON to `file` once ready")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := bytesize.Parse(s)
		if err == nil && n == 0 {
			err = fmt.Errorf("size %q: zero", s)
		}
		if err != nil {
			return o, fmt.Errorf("--layer-sizes: %w", err)
		}
		o.layerSizes = append(o.layerSizes, int64(n))
	}
	if push != "" {
		for _, ref := range strings.Split(push, ",") {
			repo, tag, ok := strings.Cut(strings.TrimSpace(ref), ":")
			if !ok || repo == "" || tag == "" {
				return o, fmt.Errorf("--push %q: want repo:tag", ref)
			}
			o.push = append(o.push, repo+":"+tag)
		}
	}
	return o, nil
}

func controlHandler(reg *registrytest.Registry, info Info) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_stats", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, reg.Stats())
	})
	mux.HandleFunc("POST /_stats/reset", func(w http.ResponseWriter, _ *http.Request) {
		reg.ResetStats()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_images", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, info.Images)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// writeInfo writes info to path through a temporary file and a rename, so a
// reader never sees it half written.
func writeInfo(path string, info Info) error {
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".info-*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
