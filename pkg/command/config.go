package command

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Config is what Load needs of a binary's Config (convention 14):
// defaults, and a Validate that reports every problem, each naming its key.
type Config[C any] interface {
	ApplyDefaults() C
	Validate() error
}

// Load layers a binary's configuration: the YAML file at path (none when
// path is ""), then what set writes over it (the flags the user gave, the
// environment), then the defaults. It validates the result and reports
// every problem of the file and of the values at once.
func Load[C Config[C]](path string, set func(*C)) (C, error) {
	var cfg, zero C
	var fileErr error
	if path != "" {
		if fileErr = LoadYAML(path, &cfg); ReadFailed(fileErr) {
			return zero, fileErr
		}
	}
	set(&cfg)
	cfg = cfg.ApplyDefaults()
	if err := errors.Join(fileErr, cfg.Validate()); err != nil {
		return zero, fmt.Errorf("invalid configuration:\n%w", err)
	}
	return cfg, nil
}

// LoadYAML decodes the YAML file at path into v as DecodeYAML does.
func LoadYAML(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return DecodeYAML(b, path, v)
}

// DecodeYAML decodes the YAML document b (read from the file name) into v,
// a pointer to a Config with yaml tags. An empty document leaves v as it
// is.
//
// Every problem is reported at once, each naming the key path as the user
// writes it (preheat.insecureRegistries, cache.tagTTL, nodes[1],
// preheat.registries[docker.io]) and its line: unknown keys (with the
// known key it most resembles, so that a misspelt key does not silently
// fall back to a default) and values of the wrong type. Those come as a
// *FileProblems, with v decoded as far as it could be, so that the caller
// validates the rest and reports its problems too; a document that cannot
// be parsed at all is another error (see ReadFailed).
func DecodeYAML(b []byte, name string, v any) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config %s: %w", name, err)
	}
	if doc.Kind == 0 {
		return nil // empty document
	}
	keys := keyIndex{lines: map[int]string{}}
	keys.walk(&doc, reflect.TypeOf(v), "")
	problems := keys.unknown

	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return fmt.Errorf("config %s: %w", name, err)
		}
		for _, msg := range te.Errors {
			problems = append(problems, keys.describe(msg))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.SliceStable(problems, func(i, j int) bool { return problems[i].line < problems[j].line })
	fp := &FileProblems{Name: name}
	for _, p := range problems {
		fp.Problems = append(fp.Problems, errors.New(p.msg))
	}
	return fp
}

// FileProblems are the problems of a config file that could be parsed:
// unknown keys and values of the wrong type, one error each.
type FileProblems struct {
	Name     string
	Problems []error
}

func (e *FileProblems) Error() string {
	return "config " + e.Name + ":\n" + errors.Join(e.Problems...).Error()
}

// Unwrap returns the problems.
func (e *FileProblems) Unwrap() []error { return e.Problems }

// ReadFailed reports whether err, from LoadYAML or DecodeYAML, left
// nothing to validate: the file could not be read or parsed. A
// *FileProblems is not such an error: the caller validates what was
// decoded and reports both (errors.Join(fileErr, cfg.Validate())).
func ReadFailed(err error) bool {
	var fp *FileProblems
	return err != nil && !errors.As(err, &fp)
}

// Section names the key of a nested config's problems: each problem of
// err (one, or several joined with errors.Join) is prefixed with "key.".
// Packages name their keys relative to their own section, since the
// binaries nest them under different keys (manifestCache in dfdaemon,
// cache in registry-cache).
func Section(key string, err error) error {
	if err == nil {
		return nil
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s.%w", key, e)
	}
	return errors.Join(out...)
}

type problem struct {
	line int
	msg  string
}

// keyIndex maps the lines of a YAML document to the key paths they hold
// and collects the keys the config type does not know.
type keyIndex struct {
	lines   map[int]string
	unknown []problem
}

var (
	yamlUnmarshaler = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func (k *keyIndex) at(line int, path string) {
	if _, ok := k.lines[line]; !ok {
		k.lines[line] = path
	}
}

// walk follows n and the Go type t it decodes into side by side.
func (k *keyIndex) walk(n *yaml.Node, t reflect.Type, path string) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case n == nil || t == nil:
		return
	case n.Kind == yaml.DocumentNode:
		for _, c := range n.Content {
			k.walk(c, t, path)
		}
		return
	case n.Kind == yaml.AliasNode:
		k.walk(n.Alias, t, path)
		return
	}
	if path != "" && n.Kind == yaml.ScalarNode {
		k.at(n.Line, path) // a collection's line is its first key's
	}
	if reflect.PointerTo(t).Implements(yamlUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
		return // the type reads its own value
	}
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			p := join(path, key.Value)
			k.at(key.Line, p)
			ft, ok := fields[key.Value]
			if !ok {
				k.unknown = append(k.unknown, problem{key.Line, fmt.Sprintf("%s (line %d): unknown key%s", p, key.Line, suggest(key.Value, fields))})
				continue
			}
			k.walk(val, ft, p)
		}
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Map:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			p := path + "[" + key.Value + "]"
			k.at(key.Line, p)
			k.walk(val, t.Elem(), p)
		}
	case n.Kind == yaml.SequenceNode && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array):
		for i, c := range n.Content {
			k.walk(c, t.Elem(), path+"["+strconv.Itoa(i)+"]")
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlFields returns the keys of struct type t (inline structs included)
// and the types of their values.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range yamlFields(ft) {
					out[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name) // yaml.v3's default
		}
		out[name] = f.Type
	}
	return out
}

// suggest names the known key closest to an unknown one, if any is close.
func suggest(key string, known map[string]reflect.Type) string {
	best, bestD := "", 0
	lk := strings.ToLower(key)
	for k := range known {
		kk := strings.ToLower(k)
		d := distance(lk, kk)
		// Close in spelling, or one a shortening of the other (user,
		// username).
		near := d <= max(2, len(k)/4) || len(lk) >= 3 && len(kk) >= 3 && (strings.HasPrefix(kk, lk) || strings.HasPrefix(lk, kk))
		if near && (best == "" || d < bestD || d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// distance is the Levenshtein distance between a and b, in bytes.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var (
	// lineMsg splits yaml.v3's "line 3: cannot unmarshal …" and the
	// "line 3: …" of our own scalar types.
	lineMsg = regexp.MustCompile(`^line (\d+): (.*)$`)
	// intoType is the Go type yaml.v3 names in a type error.
	intoType = regexp.MustCompile(`cannot unmarshal (!!\w+) (.*) into (\S+)$`)
)

// goKinds names Go types in words a user of the config knows.
var goKinds = map[string]string{
	"time.Duration": "a duration such as 30s or 10m",
	"int":           "an integer", "int64": "an integer", "int32": "an integer",
	"uint": "a non-negative integer", "uint64": "a non-negative integer", "uint32": "a non-negative integer",
	"float64": "a number", "float32": "a number",
	"bool":   "true or false",
	"string": "a string",
}

// describe rewrites one of yaml.v3's type errors to name the key path.
func (k *keyIndex) describe(msg string) problem {
	m := lineMsg.FindStringSubmatch(msg)
	if m == nil {
		return problem{msg: msg}
	}
	line, _ := strconv.Atoi(m[1])
	text := m[2]
	if t := intoType.FindStringSubmatch(text); t != nil {
		want, ok := goKinds[t[3]]
		switch {
		case ok:
		case strings.HasPrefix(t[3], "[]"):
			want = "a list"
		case strings.HasPrefix(t[3], "map["):
			want = "a mapping of keys to values"
		default:
			want = "a mapping of keys" // a config struct
		}
		text = fmt.Sprintf("%q is not %s", strings.Trim(t[2], "`"), want)
	}
	if path, ok := k.lines[line]; ok {
		return problem{line, fmt.Sprintf("%s (line %d): %s", path, line, text)}
	}
	return problem{line, fmt.Sprintf("line %d: %s", line, text)}
}
