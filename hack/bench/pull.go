package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
)

// manifestAccept is what docker and containerd send for a manifest by tag.
var manifestAccept = strings.Join([]string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
}, ", ")

// blobTiming is when one blob of a pull started and finished, since the
// scenario's start.
type blobTiming struct {
	digest     digest.Digest
	size       int64
	start, end time.Duration
}

// pullResult is one client's pull.
type pullResult struct {
	// done is when the last blob was verified, since the scenario's start.
	done  time.Duration
	blobs []blobTiming
}

// pullImage pulls repo:tag from the registry at base the way a runtime
// does: GET the manifest by tag, then the config and the layers, parallel
// at a time, each verified against its digest and size. Every body is read
// through lim (nil: unlimited), the client's download link. Times are
// measured from start.
func pullImage(ctx context.Context, base, repo, tag string, lim *rate.Limiter, parallel int, start time.Time) (pullResult, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: parallel + 1, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}

	var res pullResult
	body, mediaType, dgst, err := pullManifest(ctx, hc, base, repo, tag, lim)
	if err != nil {
		return res, err
	}
	if !strings.Contains(mediaType, "manifest") || strings.Contains(mediaType, "list") || strings.Contains(mediaType, "index") {
		return res, fmt.Errorf("manifest %s:%s: media type %q, want an image manifest", repo, tag, mediaType)
	}
	if got := digest.FromBytes(body); dgst != "" && got != dgst {
		return res, fmt.Errorf("manifest %s:%s: body digest %s, Docker-Content-Digest %s", repo, tag, got, dgst)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return res, fmt.Errorf("manifest %s:%s: %w", repo, tag, err)
	}
	blobs := append([]ocispec.Descriptor{m.Config}, m.Layers...)
	res.blobs = make([]blobTiming, len(blobs))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for i, d := range blobs {
		g.Go(func() error {
			t0 := time.Since(start)
			if err := pullBlob(gctx, hc, base, repo, d, lim); err != nil {
				return err
			}
			mu.Lock()
			res.blobs[i] = blobTiming{digest: d.Digest, size: d.Size, start: t0, end: time.Since(start)}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	res.done = time.Since(start)
	return res, nil
}

func pullManifest(ctx context.Context, hc *http.Client, base, repo, tag string, lim *rate.Limiter) (body []byte, mediaType string, dgst digest.Digest, err error) {
	u := base + "/v2/" + repo + "/manifests/" + tag
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", "", err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, "", "", err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(&throttledReader{ctx: ctx, r: resp.Body, lim: lim}, 4<<20))
	if err != nil {
		return nil, "", "", fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", "", fmt.Errorf("GET %s: %s: %.200s", u, resp.Status, body)
	}
	return body, resp.Header.Get("Content-Type"), digest.Digest(resp.Header.Get("Docker-Content-Digest")), nil
}

func pullBlob(ctx context.Context, hc *http.Client, base, repo string, d ocispec.Descriptor, lim *rate.Limiter) error {
	u := base + "/v2/" + repo + "/blobs/" + d.Digest.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("GET %s: %s: %.200s", u, resp.Status, b)
	}
	v := d.Digest.Verifier()
	n, err := io.Copy(v, &throttledReader{ctx: ctx, r: resp.Body, lim: lim})
	if err != nil {
		return fmt.Errorf("GET %s: after %d bytes: %w", u, n, err)
	}
	if n != d.Size || !v.Verified() {
		return fmt.Errorf("GET %s: %d bytes that do not match the digest (size %d)", u, n, d.Size)
	}
	return nil
}
