package registrysource

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

const fuzzHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func FuzzValidateRepository(f *testing.F) {
	for _, s := range []string{
		"library/alpine", "a", "a/b/c", "Library/alpine", "a/../b", "..", "a//b", "/a", "a/", "",
		"a%2Fb", "a/%2e%2e/b", strings.Repeat("a", 256), strings.Repeat("a/", 127) + "a", "a:5000/b",
		"a__b", "a_b", "a.b-c", "a\x00b", "a b", "a/b/blobs/sha256:" + fuzzHex,
	} {
		f.Add(s)
	}
	base := &url.URL{Scheme: "https", Host: "registry.example"}
	f.Fuzz(func(t *testing.T, repo string) {
		err := ValidateRepository(repo)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ValidateRepository(%q) = %v, not ErrInvalid", repo, err)
			}
			if _, err := TagsURL(base, repo); err == nil {
				t.Fatalf("TagsURL accepted invalid repository %q", repo)
			}
			return
		}
		if len(repo) == 0 || len(repo) > 255 || strings.ToLower(repo) != repo {
			t.Fatalf("ValidateRepository accepted %q: empty, too long or upper case", repo)
		}
		for c := range strings.SplitSeq(repo, "/") {
			if c == "" || c == "." || c == ".." || strings.ContainsAny(c, "%:@\\ \x00?#") {
				t.Fatalf("ValidateRepository accepted %q: component %q", repo, c)
			}
		}
		// The URL built from it stays under /v2/<repo>/ and parses back.
		d := digest.Digest("sha256:" + fuzzHex)
		raw, err := BlobURL(base, repo, d)
		if err != nil {
			t.Fatalf("BlobURL(%q): %v", repo, err)
		}
		u, err := url.Parse(raw)
		if err != nil || u.Host != base.Host || u.Path != "/v2/"+repo+"/blobs/"+string(d) || u.RawQuery != "" {
			t.Fatalf("BlobURL(%q) = %q (%v)", repo, raw, err)
		}
	})
}

func FuzzValidateReference(f *testing.F) {
	for _, s := range []string{
		"latest", "v1.2.3", "_x", "-x", ".x", strings.Repeat("a", 128), strings.Repeat("a", 129),
		"sha256:" + fuzzHex, "sha256:" + strings.ToUpper(fuzzHex), "sha256:", "sha256:" + fuzzHex[:63],
		"sha256:" + fuzzHex + "0", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha512:" + fuzzHex + fuzzHex,
		"sha256:../" + fuzzHex[3:], "../latest", "a/b", "", "la test", "tag\x00",
	} {
		f.Add(s)
	}
	base := &url.URL{Scheme: "http", Host: "127.0.0.1:5000"}
	f.Fuzz(func(t *testing.T, ref string) {
		tag, d, err := parseRef(ref)
		if (err == nil) != (ValidateReference(ref) == nil) {
			t.Fatalf("parseRef and ValidateReference disagree on %q", ref)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("parseRef(%q) = %v, not ErrInvalid", ref, err)
			}
			return
		}
		switch {
		case tag != "" && d == "":
			if tag != ref || len(tag) > 128 || strings.ContainsAny(tag, "/:%\\ \x00") || tag[0] == '.' || tag[0] == '-' {
				t.Fatalf("parseRef(%q) accepted tag %q", ref, tag)
			}
		case tag == "" && d != "":
			hexPart, ok := strings.CutPrefix(string(d), "sha256:")
			if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" || string(d) != ref {
				t.Fatalf("parseRef(%q) accepted digest %q", ref, d)
			}
		default:
			t.Fatalf("parseRef(%q) = tag %q, digest %q: want exactly one", ref, tag, d)
		}
		raw, err := ManifestURL(base, "library/a", ref)
		if err != nil {
			t.Fatalf("ManifestURL(%q): %v", ref, err)
		}
		if u, err := url.Parse(raw); err != nil || u.Path != "/v2/library/a/manifests/"+ref {
			t.Fatalf("ManifestURL(%q) = %q (%v)", ref, raw, err)
		}
	})
}

func FuzzParseImage(f *testing.F) {
	for _, s := range []string{
		"alpine", "library/alpine:3", "127.0.0.1:5000/a/b:1", "ghcr.io/org/app@sha256:" + fuzzHex,
		"Alpine", "a/../b", "http://x/y", "a@md5:abc", ":tag", "a:b:c", "", "localhost/a",
	} {
		f.Add(s)
	}
	c := New(WithInsecureRegistries([]string{"127.0.0.1:5000"}))
	f.Fuzz(func(t *testing.T, s string) {
		ir, err := c.ParseImage(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseImage(%q) = %v, not ErrInvalid", s, err)
			}
			return
		}
		if checkBase(ir.Base) != nil || ValidateRepository(ir.Repo) != nil || ValidateReference(ir.Ref) != nil {
			t.Fatalf("ParseImage(%q) = %+v: invalid base, repository or reference", s, ir)
		}
		if _, err := ManifestURL(ir.Base, ir.Repo, ir.Ref); err != nil {
			t.Fatalf("ManifestURL of ParseImage(%q): %v", s, err)
		}
	})
}

func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"`,
		`bearer  Realm = "https://a/t" , service=svc`, `Bearer realm="https://a/t",error="say \"no\""`,
		`Basic realm="Registry Realm"`, `Basic realm="x", Bearer realm="https://a/t"`, `Negotiate`,
		`Bearer realm="unterminated`, `Bearer realm="\`, `=x, Bearer`, `,,, ,`, `Bearer realm=`, "\x00\xff",
		`Bearer realm="http://169.254.169.254/latest/meta-data/"`, `Bearer a=b c=d, e`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		chs := parseChallenges(s)
		if len(chs) > len(s) {
			t.Fatalf("parseChallenges(%q): %d challenges", s, len(chs))
		}
		for _, ch := range chs {
			if !isToken(ch.scheme) || strings.ToLower(ch.scheme) != ch.scheme {
				t.Fatalf("parseChallenges(%q): scheme %q", s, ch.scheme)
			}
			for k := range ch.params {
				if !isToken(k) || strings.ToLower(k) != k {
					t.Fatalf("parseChallenges(%q): param name %q", s, k)
				}
			}
		}
		picked := pickChallenge([]string{s})
		if picked != nil {
			if picked.scheme != "bearer" && picked.scheme != "basic" ||
				picked.scheme == "bearer" && picked.params["realm"] == "" {
				t.Fatalf("pickChallenge(%q) = %+v", s, picked)
			}
		}
		// Written back with every value quoted, the challenges parse the same.
		var b strings.Builder
		for i, ch := range chs {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(ch.scheme)
			first := true
			for k, v := range ch.params {
				if first {
					b.WriteByte(' ')
				} else {
					b.WriteByte(',')
				}
				first = false
				b.WriteString(k + `="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`)
			}
		}
		back := parseChallenges(b.String())
		if len(back) != len(chs) {
			t.Fatalf("parseChallenges(%q) = %d challenges, rewritten %q = %d", s, len(chs), b.String(), len(back))
		}
		for i := range chs {
			if back[i].scheme != chs[i].scheme || len(back[i].params) != len(chs[i].params) {
				t.Fatalf("challenge %d of %q: %+v, rewritten %+v", i, s, chs[i], back[i])
			}
			for k, v := range chs[i].params {
				if back[i].params[k] != v {
					t.Fatalf("challenge %d of %q: %s=%q, rewritten %q", i, s, k, v, back[i].params[k])
				}
			}
		}
	})
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}
