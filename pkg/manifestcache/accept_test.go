package manifestcache

import (
	"strings"
	"testing"
)

// FuzzAccept: normaliseAccept's fast path for one plain media type must
// answer as the general normalisation does.
func FuzzAccept(f *testing.F) {
	const d2 = "application/vnd.docker.distribution.manifest.v2+json"
	f.Add(d2, "", d2)
	f.Add(d2+";q=0, application/*", "", d2)
	f.Add(" ; Q=0 ,Application/VND.docker.distribution.manifest.v2+json ", "*/*;q=0", d2+"; charset=utf-8")
	f.Add("application/*", "text/plain", "application")
	f.Add(";q=0", "", "q=0")
	f.Fuzz(func(t *testing.T, a, b, mt string) {
		for _, accept := range [][]string{nil, {a}, {a, b}} {
			if got, want := normaliseAccept(accept), strings.Join(acceptTypes(accept), ","); got != want {
				t.Fatalf("normaliseAccept(%q) = %q, want %q", accept, got, want)
			}
		}
	})
}

func TestHitAllocations(t *testing.T) {
	f := newFixture(t, Config{})
	f.reg.put("library/app", "1", "application/vnd.oci.image.manifest.v1+json", 300)
	req := Request{Upstream: upstream, Repo: "library/app", Ref: "1", Accept: []string{"application/vnd.oci.image.manifest.v1+json"}}
	m, err := f.c.Get(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	req.Ref = m.Digest.String()
	for _, r := range []Request{req, {Upstream: req.Upstream, Repo: req.Repo, Ref: "1", Accept: req.Accept}} {
		// The tag key, the answer, and a digest's permission key.
		if n := testing.AllocsPerRun(100, func() { _, _ = f.c.Get(t.Context(), r) }); n > 2 {
			t.Errorf("Get(%s) on a hit: %v allocations, want at most 2", r.Ref, n)
		}
	}
}
