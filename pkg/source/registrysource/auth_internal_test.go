package registrysource

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseChallenges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []string
		want *challenge
	}{
		{"bearer", []string{`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"`},
			&challenge{"bearer", map[string]string{"realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull"}}},
		{"spaces and case", []string{`bearer  Realm = "https://a/t" , service=svc`},
			&challenge{"bearer", map[string]string{"realm": "https://a/t", "service": "svc"}}},
		{"escaped quote", []string{`Bearer realm="https://a/t",error="say \"no\""`},
			&challenge{"bearer", map[string]string{"realm": "https://a/t", "error": `say "no"`}}},
		{"basic", []string{`Basic realm="Registry Realm"`},
			&challenge{"basic", map[string]string{"realm": "Registry Realm"}}},
		{"bearer preferred in one value", []string{`Basic realm="x", Bearer realm="https://a/t"`},
			&challenge{"bearer", map[string]string{"realm": "https://a/t"}}},
		{"bearer preferred across values", []string{`Basic realm="x"`, `Bearer realm="https://a/t",scope="s"`},
			&challenge{"bearer", map[string]string{"realm": "https://a/t", "scope": "s"}}},
		{"bearer without realm", []string{`Bearer service="x"`}, nil},
		{"unknown scheme", []string{`Negotiate`}, nil},
		{"empty", nil, nil},
		{"garbage", []string{`=== ,,, "`}, nil},
		{"unterminated quote", []string{`Bearer realm="https://a/t`},
			&challenge{"bearer", map[string]string{"realm": "https://a/t"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, pickChallenge(tt.in))
		})
	}
}

func TestTokenCache(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	tc := newTokenCache(2, func() time.Time { return now })
	tc.put("a", "ta", time.Minute)
	tok, ok := tc.get("a")
	require.True(t, ok)
	require.Equal(t, "ta", tok)
	now = now.Add(time.Minute)
	_, ok = tc.get("a")
	require.False(t, ok, "expired")

	tc.put("b", "tb", time.Minute)
	tc.put("c", "tc", time.Minute)
	require.LessOrEqual(t, len(tc.m), 2, "bounded")
	_, ok = tc.get("c")
	require.True(t, ok)

	tc.drop("c", "other")
	_, ok = tc.get("c")
	require.True(t, ok, "drop only removes the token it names")
	tc.drop("c", "tc")
	_, ok = tc.get("c")
	require.False(t, ok)

	tc.put("d", "td", 0)
	_, ok = tc.get("d")
	require.False(t, ok, "no lifetime, not cached")
}
