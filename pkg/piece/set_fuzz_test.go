package piece

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

func FuzzSetUnmarshalJSON(f *testing.F) {
	for _, s := range []string{
		`""`, `"AQ=="`, `"/w=="`, `"AAAAAAAAAAE="`, `null`, `1`, `"!!"`, `"AQ"`, `{"a":1}`, `[1,2]`,
		`"` + strings.Repeat("A", 1<<18) + `"`, `"\u0000"`, `"AQ==`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Set
		if err := json.Unmarshal(data, &s); err != nil {
			return
		}
		if len(s.words)*8 > maxSetBytes+8 {
			t.Fatalf("decoded %d words, more than the %d-byte bound", len(s.words), maxSetBytes)
		}
		idx := s.Indices()
		if len(idx) != s.Len() {
			t.Fatalf("Indices() has %d pieces, Len() %d", len(idx), s.Len())
		}
		for i, p := range idx {
			if p < 0 || !s.Has(p) || (i > 0 && idx[i-1] >= p) {
				t.Fatalf("Indices() = %v: negative, missing or unsorted at %d", idx, i)
			}
		}
		// Marshal and unmarshal again: the same pieces, and a canonical encoding.
		enc, err := json.Marshal(&s)
		if err != nil {
			t.Fatal(err)
		}
		var back Set
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("re-decode %s: %v", enc, err)
		}
		if got := back.Indices(); len(got) != len(idx) || !slices.Equal(got, idx) {
			t.Fatalf("round trip changed the set: %v -> %v", idx, got)
		}
		enc2, _ := json.Marshal(&back)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding not canonical: %s then %s", enc, enc2)
		}
	})
}

func FuzzValidateDigest(f *testing.F) {
	for _, s := range []string{
		"sha256:" + strings.Repeat("ab", 32), "sha256:" + strings.Repeat("AB", 32), "sha256:", "sha256", "0", "",
		"md5:d41d8cd98f00b204e9800998ecf8427e", "sha512:" + strings.Repeat("ab", 64), ":", "sha256:../x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateDigest(digest.Digest(s)) != nil {
			return
		}
		hexPart, ok := strings.CutPrefix(s, "sha256:")
		if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
			t.Fatalf("ValidateDigest accepted %q", s)
		}
	})
}
