package bytesize_test

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/damselfly/damselfly/pkg/bytesize"
)

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"0", "1000", "10GiB", "512MiB", "10G", "1.5K", "1kb", " 2 TiB ", "-1", "-0", "1e3", "NaN", "Inf",
		"9223372036854775807", "9223372036854775807B", "8388608TiB", "8388607TiB", "0x10", "", "GiB", "1.5.5M",
		"99999999999999999999", "1e400K", "+5",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := bytesize.Parse(s)
		var viaText bytesize.Size
		textErr := viaText.UnmarshalText([]byte(s))
		if (err == nil) != (textErr == nil) || viaText != b && err == nil {
			t.Fatalf("Parse(%q) = %d, %v; UnmarshalText = %d, %v", s, b, err, viaText, textErr)
		}
		if err != nil {
			if b != 0 {
				t.Fatalf("Parse(%q) = %d with error %v", s, b, err)
			}
			return
		}
		if b < 0 {
			t.Fatalf("Parse(%q) = %d: negative", s, b)
		}
		back, err := bytesize.Parse(b.String())
		if err != nil || back != b {
			t.Fatalf("Parse(%q) = %d; its String %q parses to %d, %v", s, b, b.String(), back, err)
		}
		if !strings.ContainsAny(s, "\n\r\t\"'#:{}[]&*!|>%@`,") {
			var y struct {
				Size bytesize.Size `yaml:"size"`
			}
			if err := yaml.Unmarshal([]byte("size: '"+s+"'"), &y); err == nil && y.Size != b {
				t.Fatalf("yaml size %q = %d, Parse %d", s, y.Size, b)
			}
		}
	})
}
