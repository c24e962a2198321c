// Command demo shows Damselfly end to end on one machine, offline: an
// embedded registry holding a generated image, a supernode, and three
// dfdaemons that pull the image at once through their registry mirrors. It
// prints, per node, where the layer bytes came from, and how many bytes the
// registry sent.
//
//	go run ./hack/demo [-layers 3] [-layer-size 32]
package main

import (
	"context"
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
	"text/tabwriter"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	dfdaemoncmd "github.com/damselfly/damselfly/dfdaemon/cmd"
	"github.com/damselfly/damselfly/hack/internal/promtext"
	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/registrytest"
	supernodecmd "github.com/damselfly/damselfly/supernode/cmd"
)

const mib = 1 << 20

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	layers := flag.Int("layers", 3, "number of layers in the generated image")
	layerMiB := flag.Int("layer-size", 32, "size of each layer in MiB (before compression; random data barely compresses)")
	nodes := flag.Int("nodes", 3, "number of dfdaemons pulling at once")
	flag.Parse()
	if *layers < 1 || *layerMiB < 1 || *nodes < 1 {
		return errors.New("-layers, -layer-size and -nodes must be positive")
	}

	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	work, err := os.MkdirTemp("", "damselfly-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fmt.Println("starting an embedded registry with a generated image ...")
	reg, err := registrytest.Start(ctx, registrytest.WithDir(filepath.Join(work, "registry")))
	if err != nil {
		return err
	}
	defer reg.Close()
	sizes := make([]int64, *layers)
	for i := range sizes {
		sizes[i] = int64(*layerMiB) * mib
	}
	img, err := reg.PushRandomImage(ctx, "library/demo", "latest", sizes...)
	if err != nil {
		return fmt.Errorf("push image: %w", err)
	}
	reg.ResetStats()

	g, gctx := errgroup.WithContext(ctx)
	defer func() { cancel(); _ = g.Wait() }()

	snReady := make(chan net.Addr, 1)
	g.Go(func() error {
		return supernodecmd.Run(gctx, []string{
			"--listen", "127.0.0.1:0", "--data-dir", filepath.Join(work, "supernode"),
			"--admin-token", "demo", "--log-level", "error", "--source-allow", "127.0.0.1/32",
		}, supernodecmd.WithReady(func(a net.Addr) { snReady <- a }))
	})
	snAddr, err := await(gctx, snReady)
	if err != nil {
		return fmt.Errorf("supernode: %w", err)
	}

	mirrors := make([]string, *nodes)
	for i := range *nodes {
		ready := make(chan net.Addr, 1)
		g.Go(func() error {
			return dfdaemoncmd.Run(gctx, []string{
				"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1",
				"--node", snAddr.String(), "--registry", reg.URL.String(),
				"--data-dir", filepath.Join(work, fmt.Sprintf("node-%d", i)), "--log-level", "error",
				"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
				// The token the supernode generated on its first start.
				"--cluster-token-file", filepath.Join(work, "supernode", clusterauth.FileName),
			}, dfdaemoncmd.WithReady(func(mirror, _ net.Addr) { ready <- mirror }))
		})
		a, err := await(gctx, ready)
		if err != nil {
			return fmt.Errorf("dfdaemon %d: %w", i, err)
		}
		mirrors[i] = a.String()
	}
	fmt.Printf("supernode on %s, %d dfdaemons; pulling library/demo:latest (%d layers, %d MiB) on all of them at once ...\n",
		snAddr, *nodes, *layers, *layers**layerMiB)

	start := time.Now()
	took := make([]time.Duration, *nodes)
	pulls, pctx := errgroup.WithContext(gctx)
	for i, m := range mirrors {
		pulls.Go(func() error {
			if err := pull(pctx, m, "library/demo", "latest", img.Blobs()); err != nil {
				return fmt.Errorf("node %d: %w", i, err)
			}
			took[i] = time.Since(start)
			return nil
		})
	}
	if err := pulls.Wait(); err != nil {
		return err
	}

	var imageBytes int64
	for _, b := range img.Blobs() {
		imageBytes += b.Size
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\nnode\tpull time\tfrom peers\tfrom supernode\tfrom registry (back to source)\t")
	for i, m := range mirrors {
		by, err := receivedBytes(ctx, m)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%d\t%.2fs\t%s\t%s\t%s\t\n", i, took[i].Seconds(), human(by["peer"]), human(by["cdn"]), human(by["source"]))
	}
	tw.Flush()
	rs := reg.Stats()
	fmt.Printf("\nimage blobs: %s; the registry sent %s of blobs (%.2fx the image) for %d nodes\n",
		human(imageBytes), human(rs.BlobBytes), float64(rs.BlobBytes)/float64(imageBytes), *nodes)
	return nil
}

func await(ctx context.Context, ch <-chan net.Addr) (net.Addr, error) {
	select {
	case a := <-ch:
		return a, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-time.After(time.Minute):
		return nil, errors.New("not ready within a minute")
	}
}

// pull fetches the manifest and every blob through a mirror, as a runtime
// would, and checks each blob's digest.
func pull(ctx context.Context, mirror, repo, tag string, blobs []ocispec.Descriptor) error {
	u := "http://" + mirror + "/v2/" + repo + "/manifests/" + tag
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", registrytest.MediaTypeManifest)
	if err := fetch(req, ""); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, b := range blobs {
		g.Go(func() error {
			req, err := http.NewRequestWithContext(gctx, http.MethodGet, "http://"+mirror+"/v2/"+repo+"/blobs/"+b.Digest.String(), nil)
			if err != nil {
				return err
			}
			return fetch(req, b.Digest)
		})
	}
	return g.Wait()
}

func fetch(req *http.Request, want digest.Digest) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", req.URL.Path, resp.Status, strings.TrimSpace(string(b)))
	}
	v := digest.SHA256.Digester()
	if _, err := io.Copy(v.Hash(), resp.Body); err != nil {
		return err
	}
	if want != "" && v.Digest() != want {
		return fmt.Errorf("%s: got %s", want, v.Digest())
	}
	return nil
}

// receivedBytes reads damselfly_peer_received_bytes_total by its "from"
// label (cdn, peer, source) from a dfdaemon's metrics.
func receivedBytes(ctx context.Context, addr string) (map[string]int64, error) {
	m, err := promtext.Scrape(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, from := range []string{"cdn", "peer", "source"} {
		out[from] = int64(m.Sum("damselfly_peer_received_bytes_total", `from="`+from+`"`))
	}
	return out, nil
}

func human(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/mib)
}
