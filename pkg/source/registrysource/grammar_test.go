package registrysource

import (
	"regexp"
	"strings"
	"testing"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
)

// The grammar as distribution/reference's regular expressions state it:
// the oracle the hand-written checks are held to.
var anchoredTag = regexp.MustCompile(`^(?:` + reference.TagRegexp.String() + `)$`)

// regexpRepository: a host in front makes the grammar read all of the name
// as the path (else the first component could be taken for a host, which
// allows upper case and a port).
func regexpRepository(repo string) bool {
	if repo == "" || len(repo) > reference.RepositoryNameTotalLengthMax {
		return false
	}
	named, err := reference.WithName("registry.invalid/" + repo)
	return err == nil && reference.Path(named) == repo
}

func regexpReference(ref string) bool {
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		return err == nil && d.Algorithm() == digest.SHA256
	}
	return anchoredTag.MatchString(ref)
}

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
		require.Equal(t, tt.repo, ValidateRepository(tt.s) == nil, "ValidateRepository(%q)", tt.s)
		require.Equal(t, tt.refe, ValidateReference(tt.s) == nil, "ValidateReference(%q)", tt.s)
		require.Equal(t, regexpRepository(tt.s), tt.repo, "repository %q", tt.s)
		require.Equal(t, regexpReference(tt.s), tt.refe, "reference %q", tt.s)
	}
}

// FuzzGrammar keeps the hand-written grammar equal to distribution's
// regular expressions.
func FuzzGrammar(f *testing.F) {
	for _, s := range []string{
		"library/alpine", "a__b/c-d.e", "a___b", "A", "x/", "latest", "v1.0-rc_1", "-x",
		"sha256:" + strings.Repeat("ab", 32), "sha256:AB", "localhost:5000/x", strings.Repeat("ab/", 90),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidateRepository(s) == nil, regexpRepository(s); got != want {
			t.Fatalf("ValidateRepository(%q) valid = %v, the reference grammar says %v", s, got, want)
		}
		if got, want := ValidateReference(s) == nil, regexpReference(s); got != want {
			t.Fatalf("ValidateReference(%q) valid = %v, the reference grammar says %v", s, got, want)
		}
	})
}
