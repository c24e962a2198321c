package registrysource

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strings"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/damselfly/damselfly/pkg/redact"
)

const (
	dockerHubDomain   = "docker.io"
	dockerHubRegistry = "registry-1.docker.io"
	// maxIndexDepth bounds indexes that point at indexes.
	maxIndexDepth = 4
)

// ImageRef is an image reference located on a registry.
type ImageRef struct {
	// Base is the registry: https://host[:port], or http:// for a registry
	// listed by WithInsecureRegistries. Docker Hub is
	// https://registry-1.docker.io.
	Base *url.URL
	// Repo is the repository path, "library/alpine" for "alpine".
	Repo string
	// Ref is the tag ("latest" when none was given) or the sha256 digest
	// (preferred when both were given).
	Ref string
}

// String is the reference as host/repo:tag or host/repo@digest.
func (r ImageRef) String() string {
	return r.Base.Host + "/" + refString(r.Repo, r.Ref)
}

// ParseImage locates an image reference such as "alpine",
// "127.0.0.1:5000/library/app:1" or "ghcr.io/org/app@sha256:...", with the
// grammar and Docker Hub normalisation of distribution/reference. No scheme
// may be given: it is https unless the registry is insecure.
func (c *Client) ParseImage(s string) (ImageRef, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return ImageRef{}, fmt.Errorf("image %q: %w: %w", redact.Truncate(s), ErrInvalid, err)
	}
	domain, repo := reference.Domain(named), reference.Path(named)
	host := domain
	if domain == dockerHubDomain {
		host = dockerHubRegistry
	}
	ref := "latest"
	if d, ok := named.(reference.Digested); ok {
		ref = d.Digest().String()
	} else if t, ok := named.(reference.Tagged); ok {
		ref = t.Tag()
	}
	if err := ValidateRepository(repo); err != nil {
		return ImageRef{}, err
	}
	if _, _, err := parseRef(ref); err != nil {
		return ImageRef{}, err
	}
	scheme := "https"
	if c.isInsecure(host) {
		scheme = "http"
	}
	return ImageRef{Base: &url.URL{Scheme: scheme, Host: host}, Repo: repo, Ref: ref}, nil
}

// isInsecure reports whether host (host[:port]) is listed as insecure,
// exactly or by its host name alone.
func (c *Client) isInsecure(host string) bool {
	host = strings.ToLower(host)
	if c.insecure[host] {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		return c.insecure[h]
	}
	return false
}

// ParsePlatform parses "os/arch[/variant]", e.g. "linux/arm64/v8".
func ParsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return ocispec.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]: %w", redact.Truncate(s), ErrInvalid)
	}
	for _, p := range parts {
		if p == "" || len(p) > 64 || strings.ContainsAny(p, " \t\r\n") {
			return ocispec.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]: %w", redact.Truncate(s), ErrInvalid)
		}
	}
	p := ocispec.Platform{OS: strings.ToLower(parts[0]), Architecture: strings.ToLower(parts[1])}
	if len(parts) == 3 {
		p.Variant = strings.ToLower(parts[2])
	}
	return p, nil
}

// DefaultPlatform is linux on the architecture of the running program.
func DefaultPlatform() ocispec.Platform {
	return ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// Image is an image manifest resolved for one platform.
type Image struct {
	ImageRef
	// Index is the digest of the index (manifest list) the manifest was
	// picked from, "" when the reference named a manifest.
	Index digest.Digest
	// Manifest is the digest of the image manifest, MediaType its type.
	Manifest  digest.Digest
	MediaType string
	// Platform is the index entry's platform, nil without an index.
	Platform *ocispec.Platform
	Config   ocispec.Descriptor
	Layers   []ocispec.Descriptor
	// Auth authorizes pulls of the repository's blobs with the credentials
	// Resolve was given: Auth.Header(ctx) is the header for BlobURL.
	Auth *Authorizer
}

// Resolve finds the image manifest of ref for platform (nil: linux on this
// machine's architecture), using creds (which may be zero) to answer the
// registry's challenge. Indexes and Docker manifest lists are followed to
// the first entry for the platform; a variant is matched only when the
// platform names one. Manifests are verified as GetManifest does, and every
// config and layer digest must be a sha256 digest.
func (c *Client) Resolve(ctx context.Context, ref string, platform *ocispec.Platform, creds Credentials) (*Image, error) {
	ir, err := c.ParseImage(ref)
	if err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	return c.ResolveImage(ctx, ir, platform, creds)
}

// ResolveImage is Resolve for a parsed reference, whose Base (its scheme
// included) says how to reach the registry: a caller may ask a registry it
// was not configured to reach over plain http that way.
func (c *Client) ResolveImage(ctx context.Context, ir ImageRef, platform *ocispec.Platform, creds Credentials) (*Image, error) {
	want := DefaultPlatform()
	if platform != nil {
		want = *platform
	}
	a, err := c.Authorizer(ir.Base, ir.Repo, creds)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", ir, err)
	}
	img := &Image{ImageRef: ir, Auth: a}
	accept := acceptValue(nil, nil)
	cur := ir.Ref
	for range maxIndexDepth {
		m, err := c.getManifest(ctx, ir.Base, ir.Repo, cur, accept, a)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", ir, err)
		}
		switch m.MediaType {
		case ocispec.MediaTypeImageIndex, MediaTypeDockerManifestList:
			var idx ocispec.Index
			if err := json.Unmarshal(m.Body, &idx); err != nil {
				return nil, fmt.Errorf("resolve %s: decode index %s: %w", ir, m.Digest, err)
			}
			desc, ok := pickPlatform(idx.Manifests, want)
			if !ok {
				return nil, fmt.Errorf("resolve %s: index %s: %s: %w", ir, m.Digest, platformString(want), ErrPlatformNotFound)
			}
			if _, err := parseDigest(string(desc.Digest)); err != nil {
				return nil, fmt.Errorf("resolve %s: index %s entry: %w", ir, m.Digest, err)
			}
			if img.Index == "" {
				img.Index = m.Digest
			}
			p := *desc.Platform
			img.Platform = &p
			cur = desc.Digest.String()
		case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest:
			var man ocispec.Manifest
			if err := json.Unmarshal(m.Body, &man); err != nil {
				return nil, fmt.Errorf("resolve %s: decode manifest %s: %w", ir, m.Digest, err)
			}
			if err := checkDescriptor(man.Config); err != nil {
				return nil, fmt.Errorf("resolve %s: manifest %s config: %w", ir, m.Digest, err)
			}
			for i, l := range man.Layers {
				if err := checkDescriptor(l); err != nil {
					return nil, fmt.Errorf("resolve %s: manifest %s layer %d: %w", ir, m.Digest, i, err)
				}
			}
			img.Manifest, img.MediaType = m.Digest, m.MediaType
			img.Config, img.Layers = man.Config, man.Layers
			return img, nil
		default:
			return nil, fmt.Errorf("resolve %s: manifest %s of type %q: %w", ir, m.Digest, m.MediaType, ErrUnsupported)
		}
	}
	return nil, fmt.Errorf("resolve %s: indexes nested deeper than %d: %w", ir, maxIndexDepth, ErrUnsupported)
}

// checkDescriptor requires a sha256 digest and a size.
func checkDescriptor(d ocispec.Descriptor) error {
	if _, err := parseDigest(string(d.Digest)); err != nil {
		return err
	}
	if d.Size < 0 {
		return fmt.Errorf("size %d: %w", d.Size, ErrInvalid)
	}
	return nil
}

// pickPlatform returns the first manifest for want.
func pickPlatform(list []ocispec.Descriptor, want ocispec.Platform) (ocispec.Descriptor, bool) {
	for _, d := range list {
		if d.Platform == nil {
			continue
		}
		switch d.MediaType {
		case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest, ocispec.MediaTypeImageIndex, MediaTypeDockerManifestList, "":
		default:
			continue
		}
		if matchPlatform(want, *d.Platform) {
			return d, true
		}
	}
	return ocispec.Descriptor{}, false
}

func matchPlatform(want, got ocispec.Platform) bool {
	if !strings.EqualFold(want.OS, got.OS) || !strings.EqualFold(want.Architecture, got.Architecture) {
		return false
	}
	if want.Variant == "" {
		return true
	}
	wv, gv := strings.ToLower(want.Variant), strings.ToLower(got.Variant)
	if strings.EqualFold(want.Architecture, "arm64") {
		// arm64 without a variant is v8.
		if wv == "v8" && gv == "" {
			return true
		}
	}
	return wv == gv
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
