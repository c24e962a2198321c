package cmd

import (
	"net/http"
	"strings"
	"testing"
)

func FuzzHeaderFlag(f *testing.F) {
	for _, s := range []string{
		"Authorization: Bearer x", "x-a:b", "X-A: b\r\nEvil: 1", "X-A: b\nc", ": v", "no colon", "A B: c",
		"A:", "A: : b", "\x00: v", "Host: evil", "K:\tv\t", "K: v\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fl := headerFlag{h: http.Header{}}
		if err := fl.Set(s); err != nil {
			if len(fl.h) != 0 {
				t.Fatalf("Set(%q) failed (%v) but added %v", s, err, fl.h)
			}
			return
		}
		if len(fl.h) != 1 {
			t.Fatalf("Set(%q) added %d names", s, len(fl.h))
		}
		for k, vs := range fl.h {
			if k == "" || !validToken(k) || http.CanonicalHeaderKey(k) != k {
				t.Fatalf("Set(%q): name %q", s, k)
			}
			if len(vs) != 1 || strings.ContainsAny(vs[0], "\r\n") || strings.TrimSpace(vs[0]) != vs[0] {
				t.Fatalf("Set(%q): values %q", s, vs)
			}
			// The value written on the wire stays one header line.
			var b strings.Builder
			if err := fl.h.Write(&b); err != nil || strings.Count(b.String(), "\r\n") != 1 {
				t.Fatalf("Set(%q): header writes as %q (%v)", s, b.String(), err)
			}
		}
	})
}
