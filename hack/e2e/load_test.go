package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/damselfly/damselfly/pkg/registrytest"
)

// One layer, 100 clients pulling it through one dfdaemon at once while 20
// dfget processes on other peers download the same blob by digest from the
// registry: the registry sends the blob once, every copy is the blob, and
// nothing the test started is left running afterwards.
//
// Not parallel: the leak check counts every goroutine of this process.
func TestLoadOneLayer(t *testing.T) {
	skipShort(t)
	// Registered first, so it runs after every other cleanup has stopped
	// the registry, the supernode and the dfdaemon.
	t.Cleanup(func() {
		goleak.VerifyNone(t, goleak.IgnoreCurrent(),
			// The embedded registry's event broadcaster has no Close.
			goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
	})
	const clients, dfgets, size = 100, 20, 16 * mib
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "load/app", "1", size)
	require.NoError(t, err)
	layer := img.Layers[0]
	reg.ResetStats()
	sn := startSupernode(t)
	mirror := startDfdaemon(t, sn.addr, reg.URL.String())

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = clients
	hc := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()

	start := time.Now()
	dir := t.TempDir()
	var ds []*dfget
	for i := range dfgets {
		ds = append(ds, startDfget(t, ctx, reg.URL.String()+"/v2/"+img.Repo+"/blobs/"+layer.Digest.String(),
			filepath.Join(dir, fmt.Sprintf("out-%d", i)),
			"--node", sn.addr, "--notbs", "--digest", layer.Digest.String()))
	}
	var g errgroup.Group
	for i := range clients {
		g.Go(func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet,
				"http://"+mirror+"/v2/"+img.Repo+"/blobs/"+layer.Digest.String(), nil)
			if err != nil {
				return err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return fmt.Errorf("client %d: %w", i, err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("client %d: status %d", i, resp.StatusCode)
			}
			v := digest.SHA256.Digester()
			n, err := io.Copy(v.Hash(), resp.Body)
			if err != nil {
				return fmt.Errorf("client %d after %d bytes: %w", i, n, err)
			}
			if v.Digest() != layer.Digest || n != layer.Size {
				return fmt.Errorf("client %d: %d bytes of %s, want %d of %s", i, n, v.Digest(), layer.Size, layer.Digest)
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())
	for i, d := range ds {
		require.NoError(t, d.wait(t, 2*time.Minute), "dfget %d stderr:\n%s", i, d.stderr.String())
		require.Equal(t, layer.Digest.Encoded(), fileSHA256(t, d.out), "dfget %d", i)
	}
	t.Logf("%d clients and %d dfgets got %d bytes each in %s", clients, dfgets, size, time.Since(start))

	s := reg.Stats()
	require.Equal(t, 1, s.BlobGETs[layer.Digest], "registry GETs of the layer")
	require.Equal(t, layer.Size, s.BlobBytes, "the registry sent the layer exactly once")
}
