package mirror_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

type noBlobs struct{}

func (noBlobs) Open(context.Context, peer.Request, int64, int64) (io.ReadCloser, error) {
	return nil, errors.New("no blobs here")
}

// discard is a minimal http.ResponseWriter, so that the benchmark measures
// the handler and not a recorder.
type discard struct {
	h      http.Header
	status int
}

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) WriteHeader(code int)        { d.status = code }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkMirrorManifestHit is the mirror's own cost of a manifest cache
// hit by tag, without net/http, with containerd's ?ns=:
// go test -run X -bench MirrorManifestHit -benchmem.
func BenchmarkMirrorManifestHit(b *testing.B) {
	reg := registrytest.New(b)
	_, err := reg.PushRandomImage(b.Context(), "team/app", "1", 100)
	require.NoError(b, err)
	mc, err := manifestcache.New(manifestcache.Config{}, registrysource.New())
	require.NoError(b, err)
	m, err := mirror.New(mirror.Config{Registry: reg.URL.String()}, noBlobs{}, mirror.WithManifests(mc))
	require.NoError(b, err)
	for _, target := range []string{"/v2/team/app/manifests/1", "/v2/team/app/manifests/1?ns=" + reg.URL.Host} {
		b.Run(map[bool]string{true: "ns", false: "default"}[len(target) > 30], func(b *testing.B) {
			req := httptest.NewRequestWithContext(b.Context(), http.MethodGet, target, nil)
			req.Header.Set("Accept", registrytest.MediaTypeManifest)
			w := &discard{h: http.Header{}}
			m.ServeHTTP(w, req)
			require.Equal(b, http.StatusOK, w.status)
			b.ReportAllocs()
			for b.Loop() {
				w.status = 0
				clear(w.h)
				m.ServeHTTP(w, req)
			}
			require.Equal(b, http.StatusOK, w.status)
		})
	}
}
