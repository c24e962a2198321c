package ratelimit

import "testing"

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"20M", "20MiB", "20MB", "1.5G", "1k", "100", "1B", "0", "0.5", "-1M", "1e9", "NaN", "Inf", "0x10",
		"1M/s", "1iB", "M", "", " 5 K ", "1125899906842624", "1125899906842625", "9999999999999999999G",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			if n != 0 {
				t.Fatalf("Parse(%q) = %d with error %v", s, n, err)
			}
			return
		}
		if n < 1 || n > 1<<50 {
			t.Fatalf("Parse(%q) = %d: outside [1, 2^50]", s, n)
		}
	})
}
