package cdn

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/peer/upload"
)

// TestServeCPU prints the CPU time this process spends (the upload server
// and its client, on loopback) per GiB serving a committed blob three times
// through a real upload server, one piece per request as peers ask, after
// the floor: the same requests answered by net/http's file server alone.
// A measurement, not a check: it runs with DAMSELFLY_SERVE_CPU=1 only.
func TestServeCPU(t *testing.T) {
	if os.Getenv("DAMSELFLY_SERVE_CPU") == "" {
		t.Skip("set DAMSELFLY_SERVE_CPU=1 to measure")
	}
	const size = 512 << 20
	body := blob(41, size)
	o := newOrigin(t, &origin{body: body})
	root := t.TempDir()
	id, d := fetchOnce(t, o, root)
	f := newFixture(t, o, newLocal(t, filepath.Join(root, "content")), filepath.Join(root, "cdn"))
	_, err := f.cdn.Ensure(t.Context(), Request{TaskID: id, URL: o.url("/b")})
	require.NoError(t, err)
	f.settle(t, id)
	keys := clusterauth.MustParse("cdn-test-cluster-token-0123456789")
	srv := httptest.NewServer(upload.New(f.cdn, keys).Handler())
	defer srv.Close()
	// The floor: the same file served by net/http alone (sendfile, no
	// check), so that what the client costs can be told apart.
	floor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, blobFile(root, d))
	}))
	defer floor.Close()
	cpu := func() time.Duration {
		var ru syscall.Rusage
		require.NoError(t, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for round := 0; round <= 3; round++ {
		url := srv.URL + upload.Path(id)
		if round == 0 {
			url = floor.URL
		}
		start, c0 := time.Now(), cpu()
		for off := int64(0); off < size; off += 4 << 20 {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
			require.NoError(t, err)
			keys.Set(req.Header)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+4<<20-1))
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			n, err := io.Copy(io.Discard, resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			require.EqualValues(t, 4<<20, n)
		}
		gib := float64(size) / (1 << 30)
		what := fmt.Sprintf("serve %d", round)
		if round == 0 {
			what = "floor (net/http alone)"
		}
		t.Logf("%s: %.2f CPU-s per GiB, %.0f MiB/s", what, (cpu()-c0).Seconds()/gib, float64(size)/(1<<20)/time.Since(start).Seconds())
	}
}
