package btlink

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const hexHash = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"

func TestParseMagnet(t *testing.T) {
	l, err := Parse("magnet:?xt=urn:btih:" + strings.ToUpper(hexHash) + "&dn=model.bin&tr=http%3A%2F%2F127.0.0.1%3A6969%2Fannounce&ws=http%3A%2F%2F127.0.0.1%3A8080%2Fmodel.bin&x.pe=127.0.0.1:6881")
	require.NoError(t, err)
	require.Equal(t, Link{
		InfoHash: hexHash, Name: "model.bin",
		Trackers: []string{"http://127.0.0.1:6969/announce"},
		WebSeeds: []string{"http://127.0.0.1:8080/model.bin"},
		Peers:    []string{"127.0.0.1:6881"},
	}, l)
	require.True(t, l.HasEndpoints())
	require.Equal(t, "magnet:?xt=urn:btih:"+hexHash, l.Canonical())

	// base32 names the same hash.
	b32, err := Parse("magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK")
	require.NoError(t, err)
	require.Equal(t, hexHash, b32.InfoHash)
	require.False(t, b32.HasEndpoints())

	// v2.
	v2, err := Parse("magnet:?xt=urn:btmh:1220" + strings.Repeat("ab", 32))
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("ab", 32), v2.InfoHashV2)
	require.Equal(t, "magnet:?xt=urn:btmh:1220"+strings.Repeat("ab", 32), v2.Canonical())
}

func TestParseTorrentURL(t *testing.T) {
	l, err := Parse("torrent+https://example.test/a/file.torrent")
	require.NoError(t, err)
	require.Equal(t, "https://example.test/a/file.torrent", l.TorrentURL)
	require.Equal(t, "torrent+https://example.test/a/file.torrent", l.Canonical())
	require.True(t, IsLink("TORRENT+HTTP://x/y"))
	require.False(t, IsLink("https://x/y"))
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{
		"magnet:?dn=x",
		"magnet:?xt=urn:btih:1234",
		"magnet:?xt=urn:btih:" + hexHash + "&xt=urn:btih:" + strings.Repeat("0", 40),
		"magnet:?xt=urn:btmh:1120" + strings.Repeat("ab", 32),
		"magnet:?xt=urn:btih:" + hexHash + "&tr=not-a-url",
		"magnet:?xt=urn:btih:" + hexHash + "&x.pe=nohostport",
		"magnet:?xt=urn:btih:" + hexHash + strings.Repeat("&x.pe=127.0.0.1:1", 65),
		"torrent+ftp://x/y",
		"torrent+https:///nohost",
		"https://x/y",
		"magnet:?xt=urn:btih:" + hexHash + "&dn=" + strings.Repeat("x", MaxLinkLen),
	} {
		_, err := Parse(s)
		require.True(t, errors.Is(err, ErrInvalid), "%.60s: %v", s, err)
	}
}
