package registrytest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of the Docker v2 schema 2 images the fixture pushes: every
// runtime and tool reads them.
const (
	MediaTypeManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeConfig   = "application/vnd.docker.container.image.v1+json"
	MediaTypeLayer    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// Layer is one image layer: a gzip-compressed tarball and the digest of the
// uncompressed tarball (its diff ID).
type Layer struct {
	Blob   []byte
	DiffID digest.Digest
}

// Image describes a pushed image.
type Image struct {
	Repo, Tag    string
	Manifest     digest.Digest
	ManifestBody []byte
	MediaType    string
	Config       ocispec.Descriptor
	Layers       []ocispec.Descriptor
}

// Blobs returns the config and layer descriptors.
func (i Image) Blobs() []ocispec.Descriptor {
	return append([]ocispec.Descriptor{i.Config}, i.Layers...)
}

// RandomLayer returns a layer holding one file of size random bytes.
func RandomLayer(size int64) (Layer, error) {
	content := make([]byte, size)
	if _, err := rand.Read(content); err != nil {
		return Layer{}, err
	}
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	name := fmt.Sprintf("data-%x", content[:min(len(content), 8)])
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}); err != nil {
		return Layer{}, err
	}
	if _, err := tw.Write(content); err != nil {
		return Layer{}, err
	}
	if err := tw.Close(); err != nil {
		return Layer{}, err
	}
	diffID := digest.FromBytes(tarBuf.Bytes())
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if err != nil {
		return Layer{}, err
	}
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		return Layer{}, err
	}
	if err := zw.Close(); err != nil {
		return Layer{}, err
	}
	return Layer{Blob: gz.Bytes(), DiffID: diffID}, nil
}

// PushRandomImage pushes an image of random layers of the given sizes (of
// uncompressed content) as repo:tag.
func (r *Registry) PushRandomImage(ctx context.Context, repo, tag string, layerSizes ...int64) (Image, error) {
	layers := make([]Layer, 0, len(layerSizes))
	for _, size := range layerSizes {
		l, err := RandomLayer(size)
		if err != nil {
			return Image{}, err
		}
		layers = append(layers, l)
	}
	return r.PushImage(ctx, repo, tag, layers)
}

// PushImage pushes the layers, an image config for the running platform and
// a Docker v2 manifest as repo:tag.
func (r *Registry) PushImage(ctx context.Context, repo, tag string, layers []Layer) (Image, error) {
	auth, err := r.pushAuth(ctx, repo)
	if err != nil {
		return Image{}, err
	}
	img := Image{Repo: repo, Tag: tag, MediaType: MediaTypeManifest}
	diffIDs := make([]digest.Digest, 0, len(layers))
	for _, l := range layers {
		d := digest.FromBytes(l.Blob)
		if err := r.pushBlob(ctx, auth, repo, d, l.Blob); err != nil {
			return Image{}, err
		}
		img.Layers = append(img.Layers, ocispec.Descriptor{MediaType: MediaTypeLayer, Digest: d, Size: int64(len(l.Blob))})
		diffIDs = append(diffIDs, l.DiffID)
	}

	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC().Format(time.RFC3339),
		"config":       map[string]any{"Cmd": []string{"/bin/true"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return Image{}, err
	}
	cd := digest.FromBytes(config)
	if err := r.pushBlob(ctx, auth, repo, cd, config); err != nil {
		return Image{}, err
	}
	img.Config = ocispec.Descriptor{MediaType: MediaTypeConfig, Digest: cd, Size: int64(len(config))}

	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     MediaTypeManifest,
		"config":        img.Config,
		"layers":        img.Layers,
	})
	if err != nil {
		return Image{}, err
	}
	img.ManifestBody = manifest
	img.Manifest = digest.FromBytes(manifest)
	u := r.URL.JoinPath("v2", repo, "manifests", tag)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), bytes.NewReader(manifest))
	if err != nil {
		return Image{}, err
	}
	req.Header.Set("Content-Type", MediaTypeManifest)
	if err := r.do(req, auth, http.StatusCreated); err != nil {
		return Image{}, fmt.Errorf("put manifest %s:%s: %w", repo, tag, err)
	}
	return img, nil
}

// pushAuth returns the Authorization header value for pushing to repo.
func (r *Registry) pushAuth(ctx context.Context, repo string) (string, error) {
	if r.tokens == nil {
		return "", nil
	}
	tok, err := r.Token(ctx, r.admin[0], r.admin[1], "repository:"+repo+":pull,push")
	if err != nil {
		return "", err
	}
	return "Bearer " + tok, nil
}

func (r *Registry) pushBlob(ctx context.Context, auth, repo string, d digest.Digest, data []byte) error {
	start := r.URL.JoinPath("v2", repo, "blobs", "uploads")
	start.Path += "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, start.String(), nil)
	if err != nil {
		return err
	}
	loc, err := r.doLocation(req, auth, http.StatusAccepted)
	if err != nil {
		return fmt.Errorf("start upload of %s: %w", d, err)
	}
	u, err := r.URL.Parse(loc)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Set("digest", d.String())
	u.RawQuery = q.Encode()
	req, err = http.NewRequestWithContext(ctx, http.MethodPut, u.String(), bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if err := r.do(req, auth, http.StatusCreated); err != nil {
		return fmt.Errorf("upload %s: %w", d, err)
	}
	return nil
}

func (r *Registry) do(req *http.Request, auth string, want int) error {
	_, err := r.doLocation(req, auth, want)
	return err
}

func (r *Registry) doLocation(req *http.Request, auth string, want int) (string, error) {
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	return resp.Header.Get("Location"), nil
}
