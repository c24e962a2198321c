package taskid

import (
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
)

func TestForURL(t *testing.T) {
	t.Parallel()
	base, err := ForURL("http://example.com/a/b?x=1&y=2", nil, "")
	require.NoError(t, err)
	_, err = Parse(base.String())
	require.NoError(t, err)

	tests := []struct {
		name       string
		url        string
		filter     []string
		identifier string
		same       bool
	}{
		{"query order", "http://example.com/a/b?y=2&x=1", nil, "", true},
		{"host case and default port", "HTTP://Example.COM:80/a/b?x=1&y=2", nil, "", true},
		{"fragment", "http://example.com/a/b?x=1&y=2#frag", nil, "", true},
		{"filtered key", "http://example.com/a/b?x=1&y=2&sig=abc", []string{"sig"}, "", true},
		{"unfiltered key", "http://example.com/a/b?x=1&y=2&sig=abc", nil, "", false},
		{"path differs", "http://example.com/a/c?x=1&y=2", nil, "", false},
		{"identifier", "http://example.com/a/b?x=1&y=2", nil, "v2", false},
		{"port differs", "http://example.com:8080/a/b?x=1&y=2", nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id, err := ForURL(tt.url, tt.filter, tt.identifier)
			require.NoError(t, err)
			require.Equal(t, tt.same, id == base)
		})
	}
}

func TestForURLRejects(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"ftp://x/y", "file:///etc/passwd", "http://", "::::", "/relative"} {
		_, err := ForURL(u, nil, "")
		require.Error(t, err, u)
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	d := digest.FromString("hello")
	id, err := ForDigest(d)
	require.NoError(t, err)
	require.Equal(t, d.String(), id.String())
	got, ok := id.Digest()
	require.True(t, ok)
	require.Equal(t, d, got)
	require.Equal(t, "sha256-"+d.Encoded(), id.FileName())

	bad := []string{
		"", "sha256:", "../../etc/passwd", strings.Repeat("A", 64), strings.Repeat("a", 63),
		"sha512:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("a", 63) + "/",
		strings.Repeat("a", 64) + "\x00",
	}
	for _, b := range bad {
		_, err := Parse(b)
		require.ErrorIs(t, err, ErrInvalid, b)
	}
	_, err = ForDigest("md5:0cc175b9c0f1b6a831c399e269772661")
	require.ErrorIs(t, err, ErrInvalid)
	hexID, err := Parse(strings.Repeat("a", 64))
	require.NoError(t, err)
	_, ok = hexID.Digest()
	require.False(t, ok)
}

func TestParseFilter(t *testing.T) {
	t.Parallel()
	require.Equal(t, []string{"k1", "k2"}, ParseFilter("k1&k2& &k1"))
	require.Nil(t, ParseFilter(""))
}

func TestDerive(t *testing.T) {
	t.Parallel()
	d := digest.FromString("hello")
	byDigest, err := Derive(Source{Digest: d, URL: "http://example.com/x", Filter: []string{"a"}, Identifier: "i"})
	require.NoError(t, err)
	want, err := ForDigest(d)
	require.NoError(t, err)
	require.Equal(t, want, byDigest, "a digest names the task whatever the URL")

	byURL, err := Derive(Source{URL: "http://example.com/x?a=1&b=2", Filter: []string{"a"}, Identifier: "i"})
	require.NoError(t, err)
	want, err = ForURL("http://example.com/x?b=2", nil, "i")
	require.NoError(t, err)
	require.Equal(t, want, byURL)

	_, err = Derive(Source{Digest: "md5:0cc175b9c0f1b6a831c399e269772661", URL: "http://example.com/x"})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = Derive(Source{})
	require.Error(t, err)
}

func TestParseAll(t *testing.T) {
	t.Parallel()
	ids, err := ParseAll([]string{strings.Repeat("a", 64), "sha256:" + strings.Repeat("b", 64)})
	require.NoError(t, err)
	require.Equal(t, []string{strings.Repeat("a", 64), "sha256:" + strings.Repeat("b", 64)}, Strings(ids))
	_, err = ParseAll([]string{strings.Repeat("a", 64), "../x"})
	require.ErrorIs(t, err, ErrInvalid)
}

func TestForTorrent(t *testing.T) {
	const h = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
	a, err := Derive(Source{URL: "magnet:?xt=urn:btih:" + h + "&dn=a&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce", File: "dir/w.bin"})
	require.NoError(t, err)
	b, err := Derive(Source{URL: "magnet:?xt=urn:btih:" + strings.ToUpper(h) + "&x.pe=127.0.0.1:6881", File: "dir/w.bin"})
	require.NoError(t, err)
	require.Equal(t, a, b, "one info-hash and file, one task, whatever the link lists")
	c, err := Derive(Source{URL: "magnet:?xt=urn:btih:" + h, File: "dir/other.bin"})
	require.NoError(t, err)
	require.NotEqual(t, a, c, "another file, another task")
	d, err := Derive(Source{URL: "torrent+https://Example.test:443/x.torrent", File: "dir/w.bin"})
	require.NoError(t, err)
	e, err := Derive(Source{URL: "torrent+https://example.test/x.torrent", File: "dir/w.bin"})
	require.NoError(t, err)
	require.Equal(t, d, e)
	require.NotEqual(t, a, d)
	_, err = Parse(a.String())
	require.NoError(t, err)

	_, err = Derive(Source{URL: "https://example.test/x", File: "a"})
	require.ErrorIs(t, err, ErrInvalid, "a file names a file of a torrent only")
	_, err = Derive(Source{URL: "magnet:?dn=nohash"})
	require.ErrorIs(t, err, ErrInvalid)
	// A digest still names the task: the same content by any source.
	f, err := Derive(Source{URL: "magnet:?xt=urn:btih:" + h, Digest: digest.Digest("sha256:" + strings.Repeat("a", 64))})
	require.NoError(t, err)
	require.Equal(t, ID("sha256:"+strings.Repeat("a", 64)), f)
}
