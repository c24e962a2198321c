package mirror_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// memBlobs is the peer engine of the fuzz target: the blobs of one image,
// from memory. Fuzzing is about request handling, not downloads.
type memBlobs map[digest.Digest][]byte

func (m memBlobs) Open(_ context.Context, req peer.Request, off, n int64) (io.ReadCloser, error) {
	b, ok := m[digest.Digest(req.Digest)]
	if !ok || off < 0 || off > int64(len(b)) {
		return nil, errors.New("no such blob")
	}
	b = b[off:]
	if n >= 0 {
		b = b[:min(n, int64(len(b)))]
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// FuzzMirrorRequest: any request the HTTP server parses, sent to the
// mirror (as the /v2/ routes of dfdaemon's listener get it) in front of a
// real registry holding one image, is answered without a panic and never
// with a 5xx (the registry is up and the blobs are at hand), and every
// error under /v2/ is distribution-spec JSON.
func FuzzMirrorRequest(f *testing.F) {
	reg := registrytest.New(f)
	img, err := reg.PushRandomImage(f.Context(), "team/app", "v1", 2000)
	if err != nil {
		f.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16}}
	f.Cleanup(hc.CloseIdleConnections)
	blobs := memBlobs{}
	for _, b := range img.Blobs() {
		rc, err := hc.Get(reg.URL.String() + "/v2/team/app/blobs/" + b.Digest.String())
		if err != nil {
			f.Fatal(err)
		}
		data, err := io.ReadAll(rc.Body)
		rc.Body.Close()
		if err != nil {
			f.Fatal(err)
		}
		blobs[b.Digest] = data
	}
	mc, err := manifestcache.New(manifestcache.Config{}, registrysource.New(registrysource.WithHTTPClient(hc)))
	if err != nil {
		f.Fatal(err)
	}
	// No other upstream: every ?ns= but the registry's is refused, so no
	// input reaches beyond 127.0.0.1.
	m, err := mirror.New(mirror.Config{Registry: reg.URL.String()}, blobs, mirror.WithHTTPClient(hc), mirror.WithManifests(mc))
	if err != nil {
		f.Fatal(err)
	}

	layer := img.Layers[0].Digest.String()
	for _, seed := range []struct{ method, target, header string }{
		{"GET", "/v2/", ""},
		{"HEAD", "/v2", ""},
		{"GET", "/v2/team/app/manifests/v1", "Accept: " + registrytest.MediaTypeManifest},
		{"GET", "/v2/team/app/manifests/" + img.Manifest.String(), "Accept: application/vnd.oci.image.manifest.v1+json"},
		{"HEAD", "/v2/team/app/manifests/v1?ns=" + reg.URL.Host, "If-None-Match: *"},
		{"GET", "/v2/team/app/blobs/" + layer, "Range: bytes=10-20"},
		{"GET", "/v2/team/app/blobs/" + layer, "Range: bytes=-0,5-"},
		{"HEAD", "/v2/team/app/blobs/sha256:" + strings.Repeat("0", 64), ""},
		{"GET", "/v2/team/app/blobs/sha512:abc", ""},
		{"GET", "/v2/team/app/tags/list?n=1&last=v0", ""},
		{"GET", "/v2/Team/../app/manifests/v1?ns=docker.io", "Authorization: Bearer x"},
		{"PUT", "/v2/team/app/manifests/v1", "Content-Length: 0"},
		{"POST", "/v2/team/app/blobs/uploads/", ""},
		{"GET", "/v2/_catalog", ""},
		{"GET", "http://127.0.0.1/v2/team/app/manifests/v1", ""},
		{"GET", "/v2/team/app/manifests/v1?ns=%zz", ""},
		{"GET", "/v2/" + strings.Repeat("a/", 200) + "manifests/v1", ""},
	} {
		f.Add(seed.method, seed.target, seed.header)
	}
	f.Fuzz(func(t *testing.T, method, target, header string) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: mirror.test\r\n"
		if header != "" {
			raw += header + "\r\n"
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil || req.URL == nil || !strings.HasPrefix(req.URL.Path, "/v2") {
			return // refused by the HTTP server, or not routed to the mirror
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		req = req.WithContext(ctx)
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%q: status %d: %s", raw, rec.Code, rec.Body.Bytes())
		}
		if rec.Code >= 400 && rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("%q: status %d with Content-Type %q", raw, rec.Code, rec.Header().Get("Content-Type"))
		}
	})
}
