package redact

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, in, want string }{
		{"empty", "", ""},
		{"plain", "http://127.0.0.1/a", "http://127.0.0.1/a"},
		{"user and password", "https://u:p@host/a", "https://host/a"},
		{"user name alone", "https://alice@host/v2/", "https://host/v2/"},
		{"query", "https://host/a?X-Amz-Signature=s&part=1", "https://host/a"},
		{"empty query", "https://host/a?", "https://host/a"},
		{"fragment", "https://host/a#token=t", "https://host/a"},
		{"escaped path kept", "https://host/a%2Fb", "https://host/a%2Fb"},
		{"port kept", "http://[::1]:5000/v2/x", "http://[::1]:5000/v2/x"},
		{"magnet unparsable", "magnet:?xt=urn:btih:abc&tr=http://u:p@t/", "magnet:"},
		{"magnet", "magnet:?xt=urn:btih:" + hash40 + "&dn=Big+File.iso&tr=https%3A%2F%2Ftracker.test%2Fannounce%3Fpasskey%3Ds3cret" +
			"&tr=http://t2.test/s3cret/announce&ws=https://u:p@seed.test/f&x.pe=10.0.0.1:6881&x.foo=bar",
			"magnet:?xt=urn:btih:" + strings.ToLower(hash40) + "&dn=Big+File.iso"},
		{"magnet base32", "magnet:?xt=urn:btih:" + hash32 + "&tr=udp://t.test:80", "magnet:?xt=urn:btih:" + strings.ToLower(hash40)},
		{"magnet v2 and v1", "MAGNET:?xt=urn:btmh:1220" + hash64 + "&xt=urn:btih:" + hash40, "magnet:?xt=urn:btih:" + strings.ToLower(hash40) + "&xt=urn:btmh:1220" + hash64},
		{"magnet name escaped", "magnet:?xt=urn:btih:" + hash40 + "&dn=a%0Ab%26tr%3Dx", "magnet:?xt=urn:btih:" + strings.ToLower(hash40) + "&dn=a%0Ab%26tr%3Dx"},
		{"torrent file url", "torrent+https://u:p@files.test/t/x.torrent?passkey=s#f", "torrent+https://files.test/t/x.torrent"},
		{"torrent file url http", "torrent+http://files.test:8080/x.torrent?k=v", "torrent+http://files.test:8080/x.torrent"},
		{"opaque", "user:password@host", "user:"},
		{"unparsable", "http://[::1", Unparsable},
		{"control character", "http://host/\x00?sig=s", Unparsable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, URL(tt.in))
		})
	}
}

// Info-hashes of the magnet tests: one v1 hash in hex and base32, and a v2
// hash.
const (
	hash40 = "0123456789ABCDEF0123456789ABCDEF01234567"
	hash32 = "AERUKZ4JVPG66AJDIVTYTK6N54ASGRLH"
	hash64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
)

func TestError(t *testing.T) {
	t.Parallel()
	err := &url.Error{Op: "Get", URL: "https://user:pw@host.test/p/a?sig=1&x=2#frag", Err: errors.New("EOF")}
	require.Equal(t, `Get "https://host.test/p/a": EOF`, Error(err))
	require.Equal(t, "", Error(nil))
	require.Equal(t, "no url here", Text("no url here"))
	require.Equal(t, "a http://h/x and https://h/y done", Text("a http://u@h/x?k=v and https://h/y#f done"))
	require.Equal(t, `get "magnet:?xt=urn:btih:`+strings.ToLower(hash40)+`&dn=n": no peers`,
		Text(`get "magnet:?xt=urn:btih:`+hash40+`&dn=n&tr=https://t.test/announce?passkey=s": no peers`))
	require.Equal(t, "link magnet: is bad", Text("link magnet:?tr=https://t.test/s3cret is bad"))
	require.Equal(t, "fetch torrent+https://h/x.torrent failed", Text("fetch torrent+https://h/x.torrent?passkey=s failed"))
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	require.Equal(t, "short", Truncate("short"))
	exact := strings.Repeat("a", MaxQuoted)
	require.Equal(t, exact, Truncate(exact))
	require.Equal(t, exact+"...", Truncate(exact+"b"))
	// A multi-byte character straddling the bound is dropped whole.
	s := strings.Repeat("a", MaxQuoted-1) + "é" + "tail"
	require.Equal(t, strings.Repeat("a", MaxQuoted-1)+"...", Truncate(s))
}

func FuzzURL(f *testing.F) {
	for _, s := range []string{"https://u:p@host/a?sig=s#f", "magnet:?xt=urn:btih:abc", "http://[::1]:1/", "user:pw@h", "//u:p@h/p?q",
		"magnet:?xt=urn:btih:" + hash40 + "&dn=x&tr=http://t/p", "torrent+https://u:p@h/x.torrent?k=v"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got := URL(raw)
		u, err := url.Parse(raw)
		if err != nil {
			require.Equal(t, Unparsable, got)
			return
		}
		if got == "" {
			return
		}
		r, err := url.Parse(got)
		require.NoError(t, err)
		require.Nil(t, r.User, "user information kept")
		require.Empty(t, r.Fragment, "fragment kept")
		if strings.EqualFold(u.Scheme, "magnet") {
			// Only the info-hash and the name.
			q, err := url.ParseQuery(r.RawQuery)
			require.NoError(t, err)
			for k := range q {
				require.Contains(t, []string{"xt", "dn"}, k, "magnet parameter kept")
			}
		} else {
			require.Empty(t, r.RawQuery, "query kept")
		}
		if p, ok := u.User.Password(); ok && len(p) > 3 {
			require.NotContains(t, got, ":"+p+"@")
		}
		// Redacting twice changes nothing.
		require.Equal(t, got, URL(got))
	})
}
