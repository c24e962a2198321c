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
		{"magnet", "magnet:?xt=urn:btih:abc&tr=http://u:p@t/", "magnet:"},
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

func TestError(t *testing.T) {
	t.Parallel()
	err := &url.Error{Op: "Get", URL: "https://user:pw@host.test/p/a?sig=1&x=2#frag", Err: errors.New("EOF")}
	require.Equal(t, `Get "https://host.test/p/a": EOF`, Error(err))
	require.Equal(t, "", Error(nil))
	require.Equal(t, "no url here", Text("no url here"))
	require.Equal(t, "a http://h/x and https://h/y done", Text("a http://u@h/x?k=v and https://h/y#f done"))
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
	for _, s := range []string{"https://u:p@host/a?sig=s#f", "magnet:?xt=urn:btih:abc", "http://[::1]:1/", "user:pw@h", "//u:p@h/p?q"} {
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
		require.Empty(t, r.RawQuery, "query kept")
		require.Empty(t, r.Fragment, "fragment kept")
		if p, ok := u.User.Password(); ok && len(p) > 3 {
			require.NotContains(t, got, ":"+p+"@")
		}
		// Redacting twice changes nothing.
		require.Equal(t, got, URL(got))
	})
}
