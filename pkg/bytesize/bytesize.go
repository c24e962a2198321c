// Package bytesize is the one grammar of sizes in configuration files and
// flags: a number of bytes with an optional binary unit ("100G", "64GiB",
// "512 MiB", "1.5K", "1048576"). K, M, G and T, with or without "B" or
// "iB", are powers of 1024. Every size key and flag of every binary reads
// through Size, so a size written for one reads the same for all.
package bytesize

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Size is a number of bytes that reads and writes as text with an
// optional binary unit: "20GiB", "512MiB", "10G", "1000". K, M, G, T (with
// or without "iB" or "B") are powers of 1024.
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10},
	{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10},
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10},
	{"B", 1},
}

// Parse parses a size such as "10GiB" or "1048576".
func Parse(s string) (Size, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	if t == "" {
		return 0, fmt.Errorf("size %q: no number", s)
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("size %q: negative", s)
		}
		if n > math.MaxInt64/mult {
			return 0, fmt.Errorf("size %q: too large", s)
		}
		return Size(n * mult), nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("size %q: not a number with an optional unit (KiB, MiB, GiB, TiB)", s)
	}
	if f < 0 {
		return 0, fmt.Errorf("size %q: negative", s)
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return Size(v), nil
}

// String renders the size with the largest binary unit that divides it.
func (b Size) String() string {
	n := int64(b)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Approx renders the size for people watching it change (progress, rates):
// one decimal in the largest binary unit it reaches, "512 B", "1.5 KiB",
// "20.0 MiB". It is for display only; String is what Parse reads back.
func (b Size) Approx() string {
	const unit = 1024
	n := int64(b)
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return strconv.FormatFloat(float64(n)/float64(div), 'f', 1, 64) + " " + "KMGTP"[exp:exp+1] + "iB"
}

// MarshalText renders the size as String does.
func (b Size) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

// UnmarshalText parses the size as Parse does.
func (b *Size) UnmarshalText(text []byte) error {
	if b == nil {
		return errors.New("size: nil receiver")
	}
	v, err := Parse(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// UnmarshalYAML parses a YAML scalar as Parse does; errors name the
// line and do not stop the decoder.
func (b *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n, "a size must be a number or a string such as 10GiB")
	}
	if err := b.UnmarshalText([]byte(n.Value)); err != nil {
		return lineError(n, err.Error())
	}
	return nil
}

// lineError is a problem with the value at n. It is a *yaml.TypeError, so
// the decoder goes on and reports every other problem of the file too.
func lineError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}

// Set parses a flag value as Parse does (flag.Value).
func (b *Size) Set(s string) error { return b.UnmarshalText([]byte(s)) }

// Type names the flag's value kind (pflag.Value).
func (b *Size) Type() string { return "size" }
