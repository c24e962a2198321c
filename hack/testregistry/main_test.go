package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/damselfly/damselfly/pkg/registrytest"
	"github.com/opencontainers/go-digest"
)

func TestRunServesRegistryStatsAndInfo(t *testing.T) {
	dir := t.TempDir()
	infoPath := filepath.Join(dir, "info.json")
	ctx, cancel := context.WithCancel(t.Context())
	readyc := make(chan Info, 1)
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, []string{
			"--data-dir", filepath.Join(dir, "reg"),
			"--push", "library/e2e:1",
			"--layer-sizes", "1KiB,2K,3000",
			"--info", infoPath,
		}, &logs, func(i Info) { readyc <- i })
	}()
	var info Info
	select {
	case info = <-readyc:
	case err := <-done:
		t.Fatalf("run ended before ready: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("not ready after 30s")
	}

	// The info file says what the callback says.
	b, err := os.ReadFile(infoPath)
	if err != nil {
		t.Fatal(err)
	}
	var fromFile Info
	if err := json.Unmarshal(b, &fromFile); err != nil {
		t.Fatalf("info file: %v", err)
	}
	if fromFile.Registry != info.Registry || fromFile.Control != info.Control || len(fromFile.Images) != 1 {
		t.Fatalf("info file %+v, want %+v", fromFile, info)
	}
	img := fromFile.Images[0]
	if img.Repo != "library/e2e" || img.Tag != "1" || len(img.Layers) != 3 {
		t.Fatalf("pushed image %+v", img)
	}

	// Pushing is not counted.
	if s := getStats(t, info.Control); s.BlobBytes != 0 || len(s.BlobGETs) != 0 {
		t.Fatalf("stats after start: %+v", s)
	}

	// A blob fetched from the registry is what it claims, and is counted.
	layer := img.Layers[1]
	body := get(t, "http://"+info.Registry+"/v2/library/e2e/blobs/"+layer.Digest.String())
	if got := digest.FromBytes(body); got != layer.Digest || int64(len(body)) != layer.Size {
		t.Fatalf("blob %s: got %d bytes digest %s", layer.Digest, len(body), got)
	}
	manifest := get(t, "http://"+info.Registry+"/v2/library/e2e/manifests/1")
	if digest.FromBytes(manifest) != img.Manifest {
		t.Fatalf("manifest digest %s, want %s", digest.FromBytes(manifest), img.Manifest)
	}
	s := getStats(t, info.Control)
	if s.BlobGETs[layer.Digest] != 1 || s.BlobBytes != layer.Size || s.ManifestGETs["library/e2e:1"] != 1 {
		t.Fatalf("stats after one blob and one manifest GET: %+v", s)
	}

	// /_images lists the pushed image; reset zeroes the counters.
	var imgs []Image
	if err := json.Unmarshal(get(t, "http://"+info.Control+"/_images"), &imgs); err != nil || len(imgs) != 1 || imgs[0].Manifest != img.Manifest {
		t.Fatalf("/_images: %v %+v", err, imgs)
	}
	resp, err := http.Post("http://"+info.Control+"/_stats/reset", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("reset: %s", resp.Status)
	}
	if s := getStats(t, info.Control); s.BlobBytes != 0 || len(s.BlobGETs) != 0 {
		t.Fatalf("stats after reset: %+v", s)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
	if _, err := http.Get("http://" + info.Registry + "/v2/"); err == nil {
		t.Fatal("registry still serving after stop")
	}
}

func TestParseFlagsRejectsBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"--push", "noTag"},
		{"--layer-sizes", "1M,zero"},
		{"--layer-sizes", "-5"},
		{"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) succeeded", args)
		}
	}
	o, err := parseFlags([]string{"--layer-sizes", "1KiB,2MB,3G,7"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{1 << 10, 2 << 20, 3 << 30, 7}
	for i, n := range want {
		if o.layerSizes[i] != n {
			t.Fatalf("layer sizes %v, want %v", o.layerSizes, want)
		}
	}
}

func getStats(t *testing.T, control string) registrytest.Stats {
	t.Helper()
	var s registrytest.Stats
	if err := json.Unmarshal(get(t, "http://"+control+"/_stats"), &s); err != nil {
		t.Fatalf("/_stats: %v", err)
	}
	return s
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	return b
}
