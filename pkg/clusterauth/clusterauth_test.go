package clusterauth

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       string
		wantErr  bool
		send     string
		rotating bool
		weak     bool
	}{
		{name: "one", in: "0123456789abcdef0123", send: "0123456789abcdef0123"},
		{name: "file with newline", in: "0123456789abcdef0123\n", send: "0123456789abcdef0123"},
		{name: "rotation", in: "new-token-0123456789,old-token-0123456789", send: "new-token-0123456789", rotating: true},
		{name: "rotation on lines", in: "new-token-0123456789\nold-token-0123456789\n", send: "new-token-0123456789", rotating: true},
		{name: "short", in: "secret", send: "secret", weak: true},
		{name: "empty", in: " \n", wantErr: true},
		{name: "three", in: "a-token-0123456789,b-token-0123456789,c-token-0123456789", wantErr: true},
		{name: "control byte", in: "token\x00with-nul-0123", wantErr: true},
		{name: "non-ascii", in: "tökén-0123456789abcdef", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := Parse(tt.in)
			if tt.wantErr {
				require.Error(t, err)
				require.True(t, k.IsZero())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.rotating, k.Rotating())
			require.Equal(t, tt.weak, k.Weak())
			h := http.Header{}
			k.Set(h)
			require.Equal(t, "Bearer "+tt.send, h.Get("Authorization"))
		})
	}
}

func TestValid(t *testing.T) {
	t.Parallel()
	k := MustParse("current-token-0123456789,previous-token-0123456789")
	tests := []struct {
		auth string
		want bool
	}{
		{"Bearer current-token-0123456789", true},
		{"Bearer previous-token-0123456789", true},
		{"BEARER current-token-0123456789", true},
		{"Bearer current-token-012345678", false},
		{"Bearer current-token-01234567890", false},
		{"Bearer ", false},
		{"Bearer", false},
		{"current-token-0123456789", false},
		{"Basic current-token-0123456789", false},
		{"", false},
	}
	for _, tt := range tests {
		r, err := http.NewRequest(http.MethodGet, "http://x/", nil)
		require.NoError(t, err)
		if tt.auth != "" {
			r.Header.Set("Authorization", tt.auth)
		}
		require.Equal(t, tt.want, k.Valid(r), "%q", tt.auth)
		require.False(t, Keys{}.Valid(r), "no keys accept nothing: %q", tt.auth)
	}
}

func TestLoadOrGenerate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), FileName)
	k1, generated, err := LoadOrGenerate(path)
	require.NoError(t, err)
	require.True(t, generated)
	require.False(t, k1.Weak())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	k2, generated, err := LoadOrGenerate(path)
	require.NoError(t, err)
	require.False(t, generated, "the second start reads the first one's token")
	h1, h2 := http.Header{}, http.Header{}
	k1.Set(h1)
	k2.Set(h2)
	require.Equal(t, h1, h2)
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left behind")

	require.NoError(t, os.WriteFile(path, []byte("\n"), 0o600))
	_, _, err = LoadOrGenerate(path)
	require.Error(t, err, "an empty token file is an error, not replaced silently")
}

func TestLoadPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	flagFile := filepath.Join(dir, "flag")
	cfgFile := filepath.Join(dir, "cfg")
	require.NoError(t, os.WriteFile(flagFile, []byte("from-flag-file-0123456789\n"), 0o600))
	require.NoError(t, os.WriteFile(cfgFile, []byte("from-config-file-0123456789\n"), 0o600))
	env := func(v string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			if k == EnvToken && v != "" {
				return v, true
			}
			return "", false
		}
	}
	tests := []struct {
		name string
		cfg  Config
		env  string
		want string
		from string
	}{
		{"flag wins", Config{FlagFile: flagFile, TokenFile: cfgFile, Token: "from-config-0123456789"}, "from-env-0123456789", "from-flag-file-0123456789", "--cluster-token-file " + flagFile},
		{"env next", Config{TokenFile: cfgFile, Token: "from-config-0123456789"}, "from-env-0123456789", "from-env-0123456789", "$" + EnvToken},
		{"config file", Config{TokenFile: cfgFile, Token: "from-config-0123456789"}, "", "from-config-file-0123456789", "clusterTokenFile " + cfgFile},
		{"config token", Config{Token: "from-config-0123456789"}, "", "from-config-0123456789", "clusterToken"},
		{"blank env ignored", Config{Token: "from-config-0123456789"}, " ", "from-config-0123456789", "clusterToken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, from, err := tt.cfg.Load(env(tt.env))
			require.NoError(t, err)
			require.Equal(t, tt.from, from)
			h := http.Header{}
			k.Set(h)
			require.Equal(t, "Bearer "+tt.want, h.Get("Authorization"))
		})
	}
	_, _, err := Config{}.Load(env(""))
	require.True(t, errors.Is(err, ErrNoToken))
	_, _, err = Config{FlagFile: filepath.Join(dir, "missing")}.Load(env("from-env-0123456789"))
	require.Error(t, err, "a named file that is missing is an error, not a fall-through")
}
