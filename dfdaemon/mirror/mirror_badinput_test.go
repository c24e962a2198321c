package mirror_test

import (
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/dfdaemon/mirror"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// tree lists every path under dir.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	require.NoError(t, filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	}))
	sort.Strings(out)
	return out
}

// TestBadClientInput: the Range matrix on a blob, malformed digests and
// repository names, each answered with the exact status and
// distribution-spec error code, never a 5xx; none of it writes anywhere in
// or beside the node's data directory.
func TestBadClientInput(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 10_000)
	require.NoError(t, err)
	sn := startSupernode(t)
	n := startNode(t, sn, mirror.Config{Registry: reg.URL.String()})

	blob := img.Layers[0].Digest
	size := img.Layers[0].Size
	blobURL := n.url + "/v2/team/app/blobs/" + blob.String()
	full := do(t, http.MethodGet, blobURL, nil)
	require.Equal(t, http.StatusOK, full.status, "%s", full.body)

	t.Run("ranges", func(t *testing.T) {
		tests := []struct {
			name, rng  string
			status     int
			start, end int64 // inclusive, for 206
		}{
			{"first byte", "bytes=0-0", 206, 0, 0},
			{"suffix", "bytes=-100", 206, size - 100, size - 1},
			{"suffix past the start", "bytes=-99999999", 206, 0, size - 1},
			{"open-ended", "bytes=9000-", 206, 9000, size - 1},
			{"end past the end", fmt.Sprintf("bytes=%d-%d", size-10, size+10), 206, size - 10, size - 1},
			{"upper case unit", "BYTES=0-9", 206, 0, 9},
			{"whitespace", " bytes = 5 - 9 ", 206, 5, 9},
			{"beyond the end", fmt.Sprintf("bytes=%d-", size), 416, 0, 0},
			{"far beyond the end", fmt.Sprintf("bytes=%d-%d", size+1000, size+2000), 416, 0, 0},
			{"inverted", "bytes=9-1", 416, 0, 0},
			{"adjacent ranges coalesced", "bytes=0-1,2-9", 206, 0, 9},
			{"overlapping ranges coalesced", "bytes=5-9,0-6", 206, 0, 9},
			{"unsatisfiable part dropped", fmt.Sprintf("bytes=%d-,10-19", size), 206, 10, 19},
			{"no part satisfiable", fmt.Sprintf("bytes=%d-,-0", size), 416, 0, 0},
			{"one bad part", "bytes=0-1,x-9", 416, 0, 0},
			{"garbage", "bytes=abc", 416, 0, 0},
			{"no dash", "bytes=5", 416, 0, 0},
			{"empty spec", "bytes=", 416, 0, 0},
			{"empty suffix", "bytes=-0", 416, 0, 0},
			{"integer overflow", "bytes=0-99999999999999999999", 416, 0, 0},
			{"negative", "bytes=-5-9", 416, 0, 0},
			{"other unit", "items=0-9", 416, 0, 0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					r := do(t, method, blobURL, hdr("Range", tt.rng))
					require.Equal(t, tt.status, r.status, "%s %q: %s", method, tt.rng, r.body)
					if tt.status == 206 {
						require.Equal(t, rangeOf(tt.start, tt.end, size), r.header.Get("Content-Range"))
						if method == http.MethodGet {
							require.Equal(t, full.body[tt.start:tt.end+1], r.body)
						}
						continue
					}
					if method == http.MethodGet {
						require.Equal(t, []string{"RANGE_INVALID"}, errorCodes(t, r.body))
					}
				}
			})
		}
	})

	root := n.store.Root()
	before := tree(t, filepath.Dir(root))
	hexPart := blob.Encoded()
	long := strings.Repeat("a", 256)
	// A path the distribution router does not match is 404 NOT_FOUND; a
	// path with "..", "//" or an encoded dot segment is redirected to its
	// clean form (301) and validated there; %2F is a "/".
	tests := []struct {
		name, path string
		status     int
		code       string // error code, or the Location of a 301
	}{
		{"digest without hex", "/v2/team/app/blobs/sha256:", 404, "NOT_FOUND"},
		{"md5 digest", "/v2/team/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"},
		{"upper case hex", "/v2/team/app/blobs/sha256:" + strings.ToUpper(hexPart), 400, "DIGEST_INVALID"},
		{"short hex", "/v2/team/app/blobs/sha256:" + hexPart[:63], 400, "DIGEST_INVALID"},
		{"long hex", "/v2/team/app/blobs/sha256:" + hexPart + "0", 400, "DIGEST_INVALID"},
		{"traversal digest", "/v2/team/app/blobs/sha256:..%2F..%2F" + hexPart[6:], 301, "/v2/team/app/blobs/" + hexPart[6:]},
		{"no algorithm", "/v2/team/app/blobs/" + hexPart, 404, "NOT_FOUND"},
		{"nul in digest", "/v2/team/app/blobs/sha256:" + hexPart[:63] + "%00", 404, "NOT_FOUND"},
		{"upper case name", "/v2/Team/App/blobs/" + blob.String(), 404, "NOT_FOUND"},
		{"name too long", "/v2/" + long + "/blobs/" + blob.String(), 400, "NAME_INVALID"},
		{"component too long", "/v2/team/" + long + "/manifests/v1", 400, "NAME_INVALID"},
		{"upper case manifest name", "/v2/Team/App/manifests/v1", 404, "NOT_FOUND"},
		{"bad tag", "/v2/team/app/manifests/-v1", 404, "NOT_FOUND"},
		{"tag too long", "/v2/team/app/manifests/" + strings.Repeat("t", 129), 404, "NOT_FOUND"},
		{"traversal tag", "/v2/team/app/manifests/..%2F..%2Fetc%2Fpasswd", 301, "/v2/team/etc/passwd"},
		{"md5 manifest", "/v2/team/app/manifests/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"},
		{"dotdot name", "/v2/team/../app/blobs/" + blob.String(), 301, "/v2/app/blobs/" + blob.String()},
		{"encoded dotdot name", "/v2/team/%2e%2e/app/blobs/" + blob.String(), 301, "/v2/app/blobs/" + blob.String()},
		{"empty component", "/v2/team//app/blobs/" + blob.String(), 301, "/v2/team/app/blobs/" + blob.String()},
		{"absolute name", "/v2//etc/passwd/blobs/" + blob.String(), 301, "/v2/etc/passwd/blobs/" + blob.String()},
		{"dotdot out of /v2", "/v2/../../etc/passwd", 301, "/etc/passwd"},
		{"encoded slash", "/v2/team%2Fapp/blobs/" + blob.String(), 200, ""},
	}
	noRedirect := &http.Client{
		Transport:     testClient.Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				req, err := http.NewRequestWithContext(t.Context(), method, n.url+tt.path, nil)
				require.NoError(t, err)
				resp, err := noRedirect.Do(req)
				require.NoError(t, err)
				body, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				require.NoError(t, resp.Body.Close())
				require.Equal(t, tt.status, resp.StatusCode, "%s %s: %.200q", method, tt.path, body)
				switch {
				case tt.status == 301:
					require.Equal(t, tt.code, resp.Header.Get("Location"))
				case tt.status == 200:
					if method == http.MethodGet {
						require.Equal(t, full.body, body)
					}
				case method == http.MethodGet:
					require.Equal(t, []string{tt.code}, errorCodes(t, body))
				default:
					require.Empty(t, body)
				}
			}
		})
	}
	require.Equal(t, before, tree(t, filepath.Dir(root)), "bad input created or removed files")
}

func rangeOf(start, end, size int64) string {
	return fmt.Sprintf("bytes %d-%d/%d", start, end, size)
}
