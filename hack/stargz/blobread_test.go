package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// The answers a mirror may give to the library's requests, and what the
// library makes of them: the request patterns of a lazy pull (a chunk, then
// a range around it with the chunk cached: two ranges in one request), for
// the mirror's Range support. Each case serves one random blob of 400000
// bytes under /v2/lazy/app/blobs/<digest>.
func TestBlobReadAnswers(t *testing.T) {
	blob := make([]byte, 400000)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range blob {
		blob[i] = byte(rng.UintN(256))
	}
	d := digest.FromBytes(blob)
	sum := func(off, n int) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(blob[off:off+n])) }
	want := fmt.Sprintf("read 100000 50000 %s\ncache 0 300000 ok\nread 0 300000 %s\n", sum(100000, 50000), sum(0, 300000))

	serve := func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}
	cases := []struct {
		name   string
		single bool
		// multi answers a request with several ranges; nil: serve
		// (multipart/byteranges).
		multi   func(w http.ResponseWriter, r *http.Request)
		wantErr string // "": the reads succeed
		// wantRanges are the Range headers of the GETs after resolving.
		wantRanges []string
	}{
		{name: "multipart", wantRanges: []string{"bytes=100000-149999", "bytes=0-99999,150000-299999"}},
		{name: "single range mode", single: true, wantRanges: []string{"bytes=100000-149999", "bytes=0-299999"}},
		{
			// Today's mirror: several ranges are malformed (RANGE_INVALID).
			// The library retries in single range mode on 400 only.
			name: "416 to several ranges",
			multi: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(blob)))
				http.Error(w, `{"errors":[{"code":"RANGE_INVALID"}]}`, http.StatusRequestedRangeNotSatisfiable)
			},
			wantErr:    "unexpected status code: 416",
			wantRanges: []string{"bytes=100000-149999", "bytes=0-99999,150000-299999"},
		},
		{
			name: "400 to several ranges",
			multi: func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "several ranges", http.StatusBadRequest)
			},
			wantRanges: []string{"bytes=100000-149999", "bytes=0-99999,150000-299999", "bytes=0-299999"},
		},
		{
			// One 206 covering both ranges: the library caches what the
			// Content-Range says.
			name: "one covering range",
			multi: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-299999/%d", len(blob)))
				w.Header().Set("Content-Type", "application/octet-stream")
				w.Header().Set("Content-Length", "300000")
				w.WriteHeader(http.StatusPartialContent)
				_, _ = w.Write(blob[:300000])
			},
			wantRanges: []string{"bytes=100000-149999", "bytes=0-99999,150000-299999"},
		},
		{
			name: "200 with the whole blob",
			multi: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", fmt.Sprint(len(blob)))
				_, _ = w.Write(blob)
			},
			wantRanges: []string{"bytes=100000-149999", "bytes=0-99999,150000-299999"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v2/lazy/app/blobs/"+d.String() {
					http.NotFound(w, r)
					return
				}
				if c.multi != nil && strings.Contains(r.Header.Get("Range"), ",") {
					c.multi(w, r)
					return
				}
				serve(w, r)
			}))
			defer srv.Close()
			host := strings.TrimPrefix(srv.URL, "http://")
			reqlog := filepath.Join(t.TempDir(), "requests.jsonl")
			args := []string{"--mirror", "registry.invalid=" + host, "--ref", "registry.invalid/lazy/app:esgz",
				"--digest", d.String(), "--size", fmt.Sprint(len(blob)), "--request-log", reqlog, "--timeout", "20s"}
			if c.single {
				args = append(args, "--single-range")
			}
			args = append(args, "read:100000:50000", "cache:0:300000", "read:0:300000")
			var out bytes.Buffer
			err := blobread(args, &out)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("blobread: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("blobread: error %v, want %q", err, c.wantErr)
			case c.wantErr == "" && out.String() != want:
				t.Fatalf("blobread printed\n%s\nwant\n%s", out.String(), want)
			}
			got := getRanges(t, reqlog)
			if strings.Join(got, " ") != strings.Join(c.wantRanges, " ") {
				t.Fatalf("Range headers of the GETs after resolving: %q, want %q", got, c.wantRanges)
			}
			for _, e := range readLog(t, reqlog) {
				if e.Query != "ns=registry.invalid" {
					t.Errorf("request %s %s: query %q, want ns=registry.invalid", e.Method, e.Path, e.Query)
				}
			}
		})
	}
}

func readLog(t *testing.T, path string) []entry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var es []entry
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("request log line %q: %v", line, err)
		}
		es = append(es, e)
	}
	return es
}

// getRanges: the Range headers of the GETs in the log after the first
// (resolving asks for bytes=0-1, then HEAD for the size).
func getRanges(t *testing.T, path string) []string {
	var rs []string
	for _, e := range readLog(t, path) {
		if e.Method == http.MethodGet && e.Range != "bytes=0-1" {
			rs = append(rs, e.Range)
		}
	}
	return rs
}

func TestMirrorFlag(t *testing.T) {
	m := mirrorFlag{}
	if err := m.Set("127.0.0.1:5000=http://127.0.0.1:65001"); err != nil {
		t.Fatal(err)
	}
	if m["127.0.0.1:5000"] != "127.0.0.1:65001" {
		t.Fatalf("mirrors %v", m)
	}
	for _, bad := range []string{"", "a", "=b", "a=", "a=b/c", "a/b=c"} {
		if err := (mirrorFlag{}).Set(bad); err == nil {
			t.Errorf("Set(%q): no error", bad)
		}
	}
	cfg := config(options{mirrors: m, singleRange: true, prefetch: true})
	mc := cfg.ResolverConfig.Host["127.0.0.1:5000"].Mirrors
	if len(mc) != 1 || mc[0].Host != "127.0.0.1:65001" || !mc[0].Insecure {
		t.Fatalf("resolver mirrors %+v", mc)
	}
	if !cfg.NoBackgroundFetch || !cfg.ForceSingleRangeMode || cfg.NoPrefetch {
		t.Fatalf("config %+v", cfg.Config)
	}
}
