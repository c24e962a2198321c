package registrysource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/damselfly/damselfly/pkg/redact"
)

// Manifest media types.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// DefaultAccept is the Accept list of a manifest request that names none:
// OCI index and manifest, Docker manifest list and v2 manifest.
func DefaultAccept() []string {
	return []string{
		ocispec.MediaTypeImageIndex,
		ocispec.MediaTypeImageManifest,
		MediaTypeDockerManifestList,
		MediaTypeDockerManifest,
	}
}

// Manifest is a verified manifest: Body hashes to Digest.
type Manifest struct {
	// Digest is the sha256 of Body.
	Digest digest.Digest
	// MediaType is the registry's Content-Type, or the body's mediaType
	// field when the Content-Type is generic.
	MediaType string
	Body      []byte
}

// Descriptor describes the manifest.
func (m *Manifest) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Body))}
}

// auth supplies the headers of a request and may learn from a 401.
type auth interface {
	header(ctx context.Context) (http.Header, error)
	// challenged is told about a 401 response; true means: ask header
	// again and retry the request (once).
	challenged(resp *http.Response) bool
}

// passThrough sends the caller's headers as they are.
type passThrough http.Header

func (p passThrough) header(context.Context) (http.Header, error) { return http.Header(p), nil }
func (passThrough) challenged(*http.Response) bool                { return false }

// droppedHeaders are never copied from a caller's header: hop-by-hop
// headers, and those that would change what the registry answers with.
var droppedHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authorization": true, "Proxy-Authenticate": true,
	"Proxy-Connection": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
	"Host": true, "Content-Length": true, "Accept-Encoding": true, "Range": true, "If-Range": true,
	"If-None-Match": true, "If-Match": true, "If-Modified-Since": true, "If-Unmodified-Since": true,
	"Expect": true,
}

// do sends one request (and one retry after a challenge the auth answers).
// A 2xx response is returned open; anything else is a *ResponseError.
func (c *Client) do(ctx context.Context, method, rawURL string, accept string, a auth) (*http.Response, error) {
	name := redact.URL(rawURL)
	for attempt := 0; ; attempt++ {
		h, err := a.header(ctx)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, method, rawURL, nil)
		if err != nil {
			return nil, fmt.Errorf("registry %s %s: %w", method, name, err)
		}
		for k, v := range h {
			if ck := http.CanonicalHeaderKey(k); !droppedHeaders[ck] {
				req.Header[ck] = append([]string(nil), v...)
			}
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("registry %s %s: %w", method, name, ctx.Err())
			}
			return nil, fmt.Errorf("registry %s %s: %w", method, name, stripURL(err))
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return resp, nil
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 && a.challenged(resp) {
			drain(resp)
			continue
		}
		return nil, responseError(method, name, resp)
	}
}

// responseError reads and closes resp.
func responseError(method, name string, resp *http.Response) *ResponseError {
	defer drain(resp)
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return &ResponseError{Method: method, URL: name, StatusCode: resp.StatusCode, Header: keptHeaders(resp.Header), Body: body}
}

func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, maxErrorBody)
	_ = resp.Body.Close()
}

// acceptValue picks the Accept of a manifest request: accept when given,
// else the caller's header's, else DefaultAccept.
func acceptValue(accept []string, h http.Header) string {
	if len(accept) > 0 {
		return strings.Join(accept, ", ")
	}
	if v := h.Values("Accept"); len(v) > 0 {
		return strings.Join(v, ", ")
	}
	return strings.Join(DefaultAccept(), ", ")
}

// GetManifest fetches a manifest by tag or sha256 digest, sending header
// (the caller's own credentials, if any) as it is. The manifest is verified
// (see the package doc); a status other than 2xx is a *ResponseError.
func (c *Client) GetManifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (*Manifest, error) {
	return c.getManifest(ctx, base, repo, ref, acceptValue(accept, header), passThrough(header))
}

func (c *Client) getManifest(ctx context.Context, base *url.URL, repo, ref, accept string, a auth) (*Manifest, error) {
	u, err := ManifestURL(base, repo, ref)
	if err != nil {
		return nil, fmt.Errorf("get manifest: %w", err)
	}
	_, want, _ := parseRef(ref)
	what := refString(repo, ref)
	resp, err := c.do(ctx, http.MethodGet, u, accept, a)
	if err != nil {
		return nil, fmt.Errorf("get manifest %s: %w", what, err)
	}
	defer drain(resp)
	if resp.ContentLength > c.maxManifest {
		return nil, fmt.Errorf("get manifest %s: %d bytes, limit %d: %w", what, resp.ContentLength, c.maxManifest, ErrTooLarge)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("get manifest %s: read body: %w", what, err)
	}
	if int64(len(body)) > c.maxManifest {
		return nil, fmt.Errorf("get manifest %s: over %d bytes: %w", what, c.maxManifest, ErrTooLarge)
	}
	got := digest.SHA256.FromBytes(body)
	if want != "" && got != want {
		return nil, fmt.Errorf("get manifest %s: body is %s: %w", what, got, ErrDigestMismatch)
	}
	if err := checkDigestHeader(resp.Header, body, got); err != nil {
		return nil, fmt.Errorf("get manifest %s: %w", what, err)
	}
	return &Manifest{Digest: got, MediaType: manifestMediaType(resp.Header.Get("Content-Type"), body), Body: body}, nil
}

// checkDigestHeader verifies the registry's Docker-Content-Digest, when it
// sent one, against body (whose sha256 is sum).
func checkDigestHeader(h http.Header, body []byte, sum digest.Digest) error {
	v := strings.TrimSpace(h.Get("Docker-Content-Digest"))
	if v == "" {
		return nil
	}
	d, err := digest.Parse(v)
	if err != nil {
		return fmt.Errorf("Docker-Content-Digest %q: %w", redact.Truncate(v), ErrDigestMismatch)
	}
	if d.Algorithm() == digest.SHA256 {
		if d != sum {
			return fmt.Errorf("Docker-Content-Digest %s, body is %s: %w", d, sum, ErrDigestMismatch)
		}
		return nil
	}
	if got := d.Algorithm().FromBytes(body); got != d {
		return fmt.Errorf("Docker-Content-Digest %s, body is %s: %w", d, got, ErrDigestMismatch)
	}
	return nil
}

// manifestMediaType is the Content-Type, unless it is missing or generic;
// then the body's mediaType field.
func manifestMediaType(ct string, body []byte) string {
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && mt != "application/json" && mt != "text/plain" && mt != "application/octet-stream" {
		return mt
	}
	var probe struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &probe) == nil && probe.MediaType != "" {
		return probe.MediaType
	}
	return mt
}

// HeadManifest asks for a manifest's descriptor without its body, sending
// header as it is. For a tag the digest is the registry's
// Docker-Content-Digest; a registry that sends none is asked with GET and
// the body is hashed. For a digest a Docker-Content-Digest must agree.
func (c *Client) HeadManifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (ocispec.Descriptor, error) {
	u, err := ManifestURL(base, repo, ref)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("head manifest: %w", err)
	}
	_, want, _ := parseRef(ref)
	what := refString(repo, ref)
	acc := acceptValue(accept, header)
	resp, err := c.do(ctx, http.MethodHead, u, acc, passThrough(header))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("head manifest %s: %w", what, err)
	}
	drain(resp)
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	desc := ocispec.Descriptor{MediaType: mt, Digest: want, Size: resp.ContentLength}
	if v := strings.TrimSpace(resp.Header.Get("Docker-Content-Digest")); v != "" {
		d, err := digest.Parse(v)
		if err != nil || (want != "" && d.Algorithm() == want.Algorithm() && d != want) {
			return ocispec.Descriptor{}, fmt.Errorf("head manifest %s: Docker-Content-Digest %q: %w", what, redact.Truncate(v), ErrDigestMismatch)
		}
		if want == "" {
			desc.Digest = d
		}
	}
	if desc.Digest == "" || desc.Digest.Algorithm() != digest.SHA256 || desc.Size < 0 {
		m, err := c.getManifest(ctx, base, repo, ref, acc, passThrough(header))
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		return m.Descriptor(), nil
	}
	return desc, nil
}

// HeadBlob asks whether the repository has blob d and may be read with
// header (sent as it is): a 2xx answer. Size is the Content-Length (-1 when
// the registry sends none); a Docker-Content-Digest that names another blob
// is ErrDigestMismatch.
func (c *Client) HeadBlob(ctx context.Context, base *url.URL, repo string, d digest.Digest, header http.Header) (ocispec.Descriptor, error) {
	u, err := BlobURL(base, repo, d)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("head blob: %w", err)
	}
	what := repo + "@" + string(d)
	resp, err := c.do(ctx, http.MethodHead, u, "", passThrough(header))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("head blob %s: %w", what, err)
	}
	drain(resp)
	if v := strings.TrimSpace(resp.Header.Get("Docker-Content-Digest")); v != "" && v != string(d) {
		return ocispec.Descriptor{}, fmt.Errorf("head blob %s: Docker-Content-Digest %q: %w", what, redact.Truncate(v), ErrDigestMismatch)
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	return ocispec.Descriptor{MediaType: mt, Digest: d, Size: resp.ContentLength}, nil
}

// refString names repo and ref for errors: repo:tag or repo@digest.
func refString(repo, ref string) string {
	if strings.Contains(ref, ":") {
		return repo + "@" + ref
	}
	return repo + ":" + ref
}

// stripURL removes the *url.Error layer, whose message holds the full URL
// (which may carry a query with a token).
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
