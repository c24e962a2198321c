package registryapi

import (
	"net/http"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/damselfly/damselfly/pkg/manifestcache"
)

var staleWarning = []string{`110 - "Response is Stale"`}

// serveManifest answers GET or HEAD of manifest ref of name (both valid)
// from the manifest cache. The header values come prepared from the cache:
// a hit formats nothing.
func (f *Front) serveManifest(w http.ResponseWriter, r *http.Request, name, ref string) {
	base, repo, ok := f.target(w, r, name, errcode.ErrorCodeManifestUnknown)
	if !ok {
		return
	}
	m, err := f.manifests.Get(r.Context(), manifestcache.Request{
		Upstream:      base,
		Repo:          repo,
		Ref:           ref,
		Accept:        r.Header.Values("Accept"),
		Authorization: r.Header.Get("Authorization"),
	})
	if err != nil {
		f.fail(w, r, base, repo+":"+ref, err, errcode.ErrorCodeManifestUnknown)
		return
	}
	hd := m.Headers
	if hd == nil {
		hd = manifestcache.NewHeaders(m.Digest, m.MediaType, len(m.Body))
	}
	// Canonical keys, assigned directly: net/http copies the header map
	// before it writes it.
	h := w.Header()
	h["Content-Type"] = hd.ContentType
	h["Docker-Content-Digest"] = hd.Digest
	h["Etag"] = hd.ETag
	if m.Stale {
		h["Warning"] = staleWarning
	}
	if inm := r.Header["If-None-Match"]; len(inm) > 0 && etagMatch(inm, hd.ETag[0]) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h["Content-Length"] = hd.ContentLength
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.Body)
	}
}

// etagMatch reports whether If-None-Match values name etag (weakly
// compared, as RFC 9110 asks for If-None-Match) or are "*".
func etagMatch(values []string, etag string) bool {
	for _, header := range values {
		for v := range strings.SplitSeq(header, ",") {
			v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
			if v == "*" || v == etag {
				return true
			}
		}
	}
	return false
}
