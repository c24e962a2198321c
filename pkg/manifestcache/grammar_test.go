package manifestcache

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

func TestGrammar(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 255)
	tests := []struct {
		s          string
		repo, refe bool
	}{
		{"library/alpine", true, false},
		{"a", true, true},
		{"a0/b-c/d__e/f.g/h---i", true, false},
		{long, true, false},
		{long + "a", false, false},
		{"", false, false},
		{"Library/alpine", false, false},
		{"library/", false, false},
		{"/library", false, false},
		{"a//b", false, false},
		{"a___b", false, true},
		{"a._b", false, true},
		{"a.-b", false, true},
		{"a-", false, true},
		{"-a", false, false},
		{"localhost:5000/app", false, false},
		{"latest", true, true},
		{"V1.0_rc-1", false, true},
		{"_x", false, true},
		{".x", false, false},
		{strings.Repeat("t", 128), true, true},
		{strings.Repeat("t", 129), true, false},
		{"sha256:" + strings.Repeat("0f", 32), false, true},
		{"sha256:" + strings.Repeat("0F", 32), false, false},
		{"sha256:" + strings.Repeat("0f", 31), false, false},
		{"sha512:" + strings.Repeat("0f", 64), false, false},
		{"v1:2", false, false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.repo, ValidRepository(tt.s), "ValidRepository(%q)", tt.s)
		require.Equal(t, tt.refe, ValidReference(tt.s), "ValidReference(%q)", tt.s)
		require.Equal(t, registrysource.ValidateRepository(tt.s) == nil, ValidRepository(tt.s), "repository %q", tt.s)
		require.Equal(t, registrysource.ValidateReference(tt.s) == nil, ValidReference(tt.s), "reference %q", tt.s)
	}
}

// FuzzGrammar keeps the hand-written grammar equal to registrysource's,
// which uses distribution's regular expressions.
func FuzzGrammar(f *testing.F) {
	for _, s := range []string{
		"library/alpine", "a__b/c-d.e", "a___b", "A", "x/", "latest", "v1.0-rc_1", "-x",
		"sha256:" + strings.Repeat("ab", 32), "sha256:AB", "localhost:5000/x", strings.Repeat("ab/", 90),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidRepository(s), registrysource.ValidateRepository(s) == nil; got != want {
			t.Fatalf("ValidRepository(%q) = %v, the reference grammar says %v", s, got, want)
		}
		if got, want := ValidReference(s), registrysource.ValidateReference(s) == nil; got != want {
			t.Fatalf("ValidReference(%q) = %v, the reference grammar says %v", s, got, want)
		}
	})
}
