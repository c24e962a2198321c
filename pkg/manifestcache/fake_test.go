package manifestcache

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// fakeRegistry is an in-memory upstream behind the Fetcher interface. It
// answers like a registry: tags resolve per Accept, digests are content
// addressed, private repositories want one of the allowed Authorization
// values (401 with a challenge otherwise), and fail, when set, overrides
// everything (an outage).
type fakeRegistry struct {
	mu       sync.Mutex
	tags     map[string][]*registrysource.Manifest // "repo:tag" -> variants
	byDigest map[digest.Digest]*registrysource.Manifest
	private  map[string]bool
	allowed  map[string]bool
	fail     error
	tamper   bool          // serve bodies that do not match their digest
	gate     chan struct{} // when set, every call waits for it to close (or ctx)
	// ctype overrides the Content-Type answered for "host/repo": registries
	// (and repositories) may name one manifest's type differently.
	ctype map[string]string

	gets, heads int
	headers     []http.Header // headers of every call, in order
	accepts     [][]string
}

var _ Fetcher = (*fakeRegistry)(nil)

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{
		tags:     map[string][]*registrysource.Manifest{},
		byDigest: map[digest.Digest]*registrysource.Manifest{},
		private:  map[string]bool{},
		allowed:  map[string]bool{},
		ctype:    map[string]string{},
	}
}

// put adds a manifest of the media type under repo:tag and returns it.
func (f *fakeRegistry) put(repo, tag, mediaType string, size int) *registrysource.Manifest {
	f.mu.Lock()
	defer f.mu.Unlock()
	body := fmt.Appendf(nil, `{"mediaType":%q,"tag":%q,"n":%d,"pad":"`, mediaType, repo+":"+tag, len(f.byDigest))
	for len(body) < size-2 {
		body = append(body, 'x')
	}
	body = append(body, '"', '}')
	m := &registrysource.Manifest{Digest: digest.FromBytes(body), MediaType: mediaType, Body: body}
	f.tags[repo+":"+tag] = append(f.tags[repo+":"+tag], m)
	f.byDigest[m.Digest] = m
	return m
}

func (f *fakeRegistry) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *fakeRegistry) calls() (gets, heads int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets, f.heads
}

func respErr(code int) *registrysource.ResponseError {
	h := http.Header{}
	if code == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="https://auth.example/token",service="registry.example"`)
	}
	return &registrysource.ResponseError{Method: "GET", URL: "https://registry.example/v2/", StatusCode: code, Header: h}
}

func (f *fakeRegistry) lookup(ctx context.Context, base *url.URL, head bool, repo, ref string, accept []string, header http.Header) (*registrysource.Manifest, error) {
	f.mu.Lock()
	gate := f.gate
	if head {
		f.heads++
	} else {
		f.gets++
	}
	f.headers = append(f.headers, header.Clone())
	f.accepts = append(f.accepts, slices.Clone(accept))
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	if f.private[repo] && !f.allowed[header.Get("Authorization")] {
		return nil, respErr(http.StatusUnauthorized)
	}
	var m *registrysource.Manifest
	if d, err := digest.Parse(ref); err == nil {
		m = f.byDigest[d]
		if m != nil && !slices.Contains(f.tagsOf(repo), m) {
			m = nil
		}
	} else {
		for _, v := range f.tags[repo+":"+ref] {
			if len(accept) == 0 || slices.Contains(acceptTypes(accept), v.MediaType) {
				m = v
				break
			}
		}
	}
	if m == nil {
		return nil, respErr(http.StatusNotFound)
	}
	out := *m
	if ct, ok := f.ctype[base.Host+"/"+repo]; ok {
		out.MediaType = ct
	}
	if f.tamper {
		out.Body = append(slices.Clone(m.Body), ' ')
	}
	return &out, nil
}

func (f *fakeRegistry) tagsOf(repo string) []*registrysource.Manifest {
	var out []*registrysource.Manifest
	for k, v := range f.tags {
		if r, _, _ := cutLast(k, ":"); r == repo {
			out = append(out, v...)
		}
	}
	return out
}

func cutLast(s, sep string) (string, string, bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

func (f *fakeRegistry) GetManifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (*registrysource.Manifest, error) {
	return f.lookup(ctx, base, false, repo, ref, accept, header)
}

func (f *fakeRegistry) HeadManifest(ctx context.Context, base *url.URL, repo, ref string, accept []string, header http.Header) (ocispec.Descriptor, error) {
	m, err := f.lookup(ctx, base, true, repo, ref, accept, header)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Body))}, nil
}

// fakeClock is a manual clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
