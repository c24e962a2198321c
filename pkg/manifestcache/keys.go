package manifestcache

// The keys of the cache: upstream, partition and Accept set of a request.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"slices"
	"strings"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// keys are the parts of one request's cache keys. Only the key a lookup
// needs is built: a cache hit builds one string.
type keys struct {
	up, repo, ref string
	// accept is the normalised Accept set; set for a tag only.
	accept string
	// part is the credential partition.
	part string
	// tag: (upstream, repo, ref, accept, partition); set for a tag only.
	tag string
}

// access is the key of a read permission, or a digest 404, of d:
// (upstream, repo, partition, digest).
func (k keys) access(d digest.Digest) string {
	return "a\x00" + k.up + "\x00" + k.repo + "\x00" + k.part + "\x00" + d.String()
}

// hint: (upstream, repo, ref, accept) without the partition: the digest
// some partition last resolved the tag to. It only tells whether asking with
// HEAD first may spare a GET; it grants nothing.
func (k keys) hint() string {
	return "h\x00" + k.up + "\x00" + k.repo + "\x00" + k.ref + "\x00" + k.accept
}

func (c *Cache) keys(req Request) keys {
	k := keys{up: c.upstreamKey(req.Upstream), repo: req.Repo, ref: req.Ref, part: c.partition(req.Authorization)}
	if strings.IndexByte(req.Ref, ':') < 0 {
		k.accept = normaliseAccept(req.Accept)
	}
	return k
}

// upstreamMemo is the last upstream key computed, so that a server with one
// upstream (registry-cache) does not format it per request.
type upstreamMemo struct {
	scheme, host, path, key string
}

func (c *Cache) upstreamKey(u *url.URL) string {
	if m := c.upMemo.Load(); u.RawPath == "" && m != nil && m.scheme == u.Scheme && m.host == u.Host && m.path == u.Path {
		return m.key
	}
	key := upstreamKey(u)
	if u.RawPath == "" {
		c.upMemo.Store(&upstreamMemo{scheme: u.Scheme, host: u.Host, path: u.Path, key: key})
	}
	return key
}

// partition is the credential partition of an Authorization header: empty
// for anonymous clients, else a keyed hash, so that the header cannot be
// recovered from what the cache keeps.
func (c *Cache) partition(authorization string) string {
	if authorization == "" {
		return ""
	}
	h := hmac.New(sha256.New, c.hkey)
	h.Write([]byte(authorization))
	return hex.EncodeToString(h.Sum(nil))
}

// upstreamKey normalises a registry base URL: lowercase scheme and host,
// no user info, no trailing slash.
func upstreamKey(u *url.URL) string {
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + strings.TrimRight(u.EscapedPath(), "/")
}

// acceptTypes splits Accept header values into their media ranges,
// lowercased, whitespace removed, parameters kept, sorted and deduplicated.
func acceptTypes(accept []string) []string {
	var out []string
	for _, v := range accept {
		for part := range strings.SplitSeq(v, ",") {
			var b strings.Builder
			for f := range strings.SplitSeq(part, ";") {
				if f = strings.ToLower(strings.TrimSpace(f)); f == "" {
					continue
				}
				if b.Len() > 0 {
					b.WriteByte(';')
				}
				b.WriteString(f)
			}
			if b.Len() > 0 {
				out = append(out, b.String())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// normaliseAccept is acceptTypes joined with ",". One Accept value that is
// already normal (one lowercase media type without parameters or spaces,
// what most clients send per header line) is returned as it is.
func normaliseAccept(accept []string) string {
	switch len(accept) {
	case 0:
		return ""
	case 1:
		if normalMediaType(accept[0]) {
			return accept[0]
		}
	}
	return strings.Join(acceptTypes(accept), ",")
}

func normalMediaType(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == ',', c == ';', c <= ' ', c >= 0x7f, 'A' <= c && c <= 'Z':
			return false
		}
	}
	return true
}

// manifestTypes are asked for on every fetch by digest, with the client's
// own: the digest fixes the content, and a registry would otherwise refuse
// media types the first client's Accept did not list.
var manifestTypes = []string{
	ocispec.MediaTypeImageIndex,
	ocispec.MediaTypeImageManifest,
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

func digestAccept(client []string, extra string) []string {
	out := slices.Clone(manifestTypes)
	out = append(out, acceptTypes(client)...)
	if extra != "" {
		out = append(out, extra)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (r Request) header() http.Header {
	if r.Authorization == "" {
		return http.Header{}
	}
	return http.Header{"Authorization": {r.Authorization}}
}
