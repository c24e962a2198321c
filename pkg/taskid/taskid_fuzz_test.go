package taskid

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

const validHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		validHex, "sha256:" + validHex, strings.ToUpper(validHex), "sha256:" + validHex[:63],
		"sha512:" + validHex, "sha256:sha256:" + validHex[:50], "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd",
		"/etc/passwd", validHex[:63] + "\x00", "", "sha256:", validHex + "0", "md5:" + validHex[:32],
	} {
		f.Add(s)
	}
	f.Add("0")
	f.Add("sha256")
	f.Fuzz(func(t *testing.T, id string) {
		parsed, err := Parse(id)
		d, isDigest := parsed.Digest()
		// ForDigest takes any string a client sends as a digest.
		if fromDigest, ferr := ForDigest(digest.Digest(id)); (ferr == nil) != isDigest || (ferr == nil && string(fromDigest) != id) {
			t.Fatalf("ForDigest(%q) = %q, %v; Digest says %v", id, fromDigest, ferr, isDigest)
		} else if ferr != nil && !errors.Is(ferr, ErrInvalid) {
			t.Fatalf("ForDigest(%q) = %v, not ErrInvalid", id, ferr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v, not ErrInvalid", id, err)
			}
			if isDigest {
				t.Fatalf("Digest(%q) = %q for an invalid ID", id, d)
			}
			return
		}
		hexPart, prefixed := strings.CutPrefix(id, "sha256:")
		if len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
			t.Fatalf("Parse accepted %q", id)
		}
		if isDigest != prefixed || (isDigest && d.Validate() != nil) {
			t.Fatalf("Digest(%q) = %q, %v", id, d, isDigest)
		}
		name := parsed.FileName()
		if strings.ContainsAny(name, "/\\:\x00") || name == "." || name == ".." || len(name) < 64 {
			t.Fatalf("FileName(%q) = %q is not one safe path element", id, name)
		}
		if prefixed {
			if got, err := ForDigest(d); err != nil || got != parsed {
				t.Fatalf("ForDigest(%q) = %q, %v", d, got, err)
			}
		}
	})
}

func FuzzForURL(f *testing.F) {
	for _, s := range [][3]string{
		{"http://example.com/a?b=1&c=2", "b", ""},
		{"HTTPS://Example.COM:443/x#frag", "", "id"},
		{"http://user:pass@[::1]:80/p?X-Amz-Signature=s&a=1", "X-Amz-Signature&Expires", ""},
		{"ftp://example.com/", "", ""},
		{"http:///nohost", "", ""},
		{"http://h/%zz", "", ""},
		{"file:///etc/passwd", "", ""},
		{"http://h/../../etc/passwd", " & &a&a", "x"},
		{"http://[::1", "", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, rawURL, filter, identifier string) {
		keys := ParseFilter(filter)
		seen := map[string]bool{}
		for _, k := range keys {
			if k == "" || k != strings.TrimSpace(k) || strings.Contains(k, "&") || seen[k] {
				t.Fatalf("ParseFilter(%q) = %q: empty, untrimmed, split or repeated key", filter, keys)
			}
			seen[k] = true
		}
		norm, err := Normalize(rawURL, keys)
		id, idErr := ForURL(rawURL, keys, identifier)
		if (err == nil) != (idErr == nil) {
			t.Fatalf("Normalize(%q) err %v but ForURL err %v", rawURL, err, idErr)
		}
		if err != nil {
			return
		}
		if _, err := Parse(id.String()); err != nil || strings.HasPrefix(id.String(), "sha256:") {
			t.Fatalf("ForURL(%q) = %q is not 64 hex", rawURL, id)
		}
		u, perr := url.Parse(norm)
		if perr != nil {
			t.Fatalf("Normalize(%q) = %q does not parse: %v", rawURL, norm, perr)
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
			t.Fatalf("Normalize(%q) = %q: bad scheme, host, user info or fragment", rawURL, norm)
		}
		q := u.Query()
		for _, k := range keys {
			if q.Has(k) {
				t.Fatalf("Normalize(%q, %q) = %q kept filtered key %q", rawURL, keys, norm, k)
			}
		}
		// Normalising is idempotent, so two spellings of one URL share a task.
		again, err := Normalize(norm, keys)
		if err != nil || again != norm {
			t.Fatalf("Normalize(Normalize(%q)) = %q, %v; want %q", rawURL, again, err, norm)
		}
	})
}
