package command

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/netpolicy"
)

func TestParseArgs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantDone bool
		wantErr  string
	}{
		{"flags", []string{"--listen", ":1"}, false, ""},
		{"help", []string{"--help"}, true, ""},
		{"version", []string{"--version"}, true, ""},
		{"unknown flag", []string{"--nope"}, false, "command line"},
		{"positional", []string{"extra"}, false, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			var out bytes.Buffer
			fs.SetOutput(&out)
			listen := fs.String("listen", "", "")
			fs.Bool("version", false, "")
			done, err := ParseArgs(fs, tt.args)
			require.Equal(t, tt.wantDone, done)
			if tt.name == "version" {
				require.True(t, strings.HasPrefix(out.String(), "x "), out.String())
			}
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			if len(tt.args) == 2 {
				require.Equal(t, ":1", *listen)
			}
		})
	}
}

func TestLoadYAML(t *testing.T) {
	t.Parallel()
	type cfg struct {
		Listen string `yaml:"listen"`
	}
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	var c cfg
	require.NoError(t, LoadYAML(write("ok.yaml", "listen: :9\n"), &c))
	require.Equal(t, ":9", c.Listen)

	c = cfg{Listen: "kept"}
	require.NoError(t, LoadYAML(write("empty.yaml", ""), &c))
	require.Equal(t, "kept", c.Listen)

	require.EqualError(t, LoadYAML(write("typo.yaml", "lisen: :9\n"), &c),
		"config "+filepath.Join(dir, "typo.yaml")+":\nlisen (line 1): unknown key (did you mean listen?)")
	require.ErrorContains(t, LoadYAML(filepath.Join(dir, "missing.yaml"), &c), "config:")
	require.ErrorContains(t, LoadYAML(write("syntax.yaml", "listen: [\n"), &c), "syntax.yaml")
}

// Every problem of a file is reported at once, each with its key path as
// the user writes it.
func TestLoadYAMLKeyPaths(t *testing.T) {
	t.Parallel()
	type creds struct {
		Username string `yaml:"username"`
	}
	type preheat struct {
		Registries         map[string]creds `yaml:"registries"`
		InsecureRegistries []string         `yaml:"insecureRegistries"`
		Timeout            time.Duration    `yaml:"timeout"`
	}
	type inline struct {
		Level string `yaml:"level"`
	}
	type config struct {
		Nodes   []string      `yaml:"nodes"`
		Quota   bytesize.Size `yaml:"quota"`
		Preheat preheat       `yaml:"preheat"`
		Log     inline        `yaml:",inline"`
		Slots   int           `yaml:"slots"`
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(p, []byte(`nodes: [a:1, b:2]
quota: 5x
level: debug
slots: many
preheat:
  insecureRegistry: [r]
  timeout: soon
  registries:
    docker.io:
      user: me
`), 0o600))
	var c config
	err := LoadYAML(p, &c)
	require.Error(t, err)
	msgs := strings.Split(err.Error(), "\n")[1:]
	require.Equal(t, []string{
		`quota (line 2): size "5x": not a number with an optional unit (KiB, MiB, GiB, TiB)`,
		`slots (line 4): "many" is not an integer`,
		`preheat.insecureRegistry (line 6): unknown key (did you mean insecureRegistries?)`,
		`preheat.timeout (line 7): "soon" is not a duration such as 30s or 10m`,
		`preheat.registries[docker.io].user (line 10): unknown key (did you mean username?)`,
	}, msgs)
	require.Equal(t, "debug", c.Log.Level, "the rest of the file is read")
}

func TestSection(t *testing.T) {
	t.Parallel()
	require.NoError(t, Section("cache", nil))
	sentinel := errors.New("invalid")
	err := Section("cache", errors.Join(fmt.Errorf("tagTTL 0s: must be positive: %w", sentinel), errors.New("maxBytes 0: must be positive")))
	require.EqualError(t, err, "cache.tagTTL 0s: must be positive: invalid\ncache.maxBytes 0: must be positive")
	require.ErrorIs(t, err, sentinel)
	require.EqualError(t, Section("peer", errors.New("x: bad")), "peer.x: bad")
}

func TestLoggerAndExit(t *testing.T) {
	t.Parallel()
	given := zap.NewNop()
	l, sync, err := Logger(given, log.Config{}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Same(t, given, l)
	sync()

	var buf bytes.Buffer
	l, sync, err = Logger(nil, log.Config{Level: "info", Format: "json"}, &buf)
	require.NoError(t, err)
	l.Info("hello")
	sync()
	require.Contains(t, buf.String(), `"msg":"hello"`)

	_, _, err = Logger(nil, log.Config{Level: "loud"}, &buf)
	require.Error(t, err)

	require.NoError(t, Exit(context.Canceled))
	require.NoError(t, Exit(fmt.Errorf("run: %w", context.Canceled)))
	boom := errors.New("boom")
	require.ErrorIs(t, Exit(boom), boom)
	require.NoError(t, Exit(nil))
}

func TestCheckDataDir(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(root, name)
		require.NoError(t, os.Mkdir(p, 0o700))
		require.NoError(t, os.Chmod(p, mode)) // not subject to the umask
		return p
	}
	for _, ok := range []string{mk("private", 0o700), mk("shared-group", 0o770), mk("readable", 0o755), filepath.Join(root, "missing")} {
		require.NoError(t, CheckDataDir(ok), ok)
	}

	open := mk("open", 0o777)
	err := CheckDataDir(open)
	require.EqualError(t, err, "data dir "+open+" is world-writable (mode 0777): fix with chmod o-w "+open)
	sticky := mk("sticky", 0o777|os.ModeSticky)
	require.ErrorContains(t, CheckDataDir(sticky), "world-writable (mode 01777)")
	require.ErrorContains(t, CheckDataDir(mk("write-only", 0o703)), "world-writable")

	wd, err := os.Getwd()
	require.NoError(t, err)
	rel, err := filepath.Rel(wd, open)
	require.NoError(t, err)
	require.ErrorContains(t, CheckDataDir(rel), "data dir "+open+" ", "named by its absolute path")

	file := filepath.Join(root, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	require.ErrorContains(t, CheckDataDir(file), "not a directory")
}

type loadCfg struct {
	Listen string `yaml:"listen"`
	Slots  int    `yaml:"slots"`
}

func (c loadCfg) ApplyDefaults() loadCfg {
	if c.Listen == "" {
		c.Listen = ":1"
	}
	return c
}

func (c loadCfg) Validate() error {
	if c.Slots < 0 {
		return fmt.Errorf("slots %d: is negative", c.Slots)
	}
	return nil
}

func TestLoad(t *testing.T) {
	t.Parallel()
	cfg, err := Load("", func(c *loadCfg) { c.Slots = 2 })
	require.NoError(t, err)
	require.Equal(t, loadCfg{Listen: ":1", Slots: 2}, cfg)

	p := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(p, []byte("listen: :9\nslotz: 1\n"), 0o600))
	_, err = Load(p, func(c *loadCfg) { c.Slots = -1 })
	// The file's problem and the values' problem, at once.
	require.ErrorContains(t, err, "slotz (line 2): unknown key (did you mean slots?)")
	require.ErrorContains(t, err, "slots -1: is negative")

	_, err = Load(filepath.Join(t.TempDir(), "missing.yaml"), func(*loadCfg) { t.Fatal("set called for an unreadable file") })
	require.ErrorContains(t, err, "config:")
}

func TestListFlag(t *testing.T) {
	t.Parallel()
	var l []string
	f := ListFlag{List: &l}
	require.NoError(t, f.Set("a:5000, b"))
	require.NoError(t, f.Set(""))
	require.NoError(t, f.Set("c,,"))
	require.Equal(t, []string{"a:5000", "b", "c"}, l)
	require.Equal(t, "a:5000,b,c", f.String())
	require.Empty(t, ListFlag{}.String())
}

// The common flags land in the log and source sections, the source lists
// adding to the file's; other flags are left to the daemon.
func TestCommonFlags(t *testing.T) {
	t.Parallel()
	var c CommonFlags
	fs := flag.NewFlagSet("d", flag.ContinueOnError)
	c.Register(fs, "sources")
	fs.String("listen", "", "")
	require.NoError(t, fs.Parse([]string{"--log-level", "debug", "--log-format", "json",
		"--source-allow", "127.0.0.1/32,10.0.0.1", "--source-deny", "10.0.0.0/8", "--listen", ":1"}))
	lg := log.Config{}
	src := netpolicy.Config{Allow: []string{"from-file"}}
	var others []string
	fs.Visit(func(fl *flag.Flag) {
		if !c.Apply(fl.Name, &lg, &src) {
			others = append(others, fl.Name)
		}
	})
	require.Equal(t, log.Config{Level: "debug", Format: "json"}, lg)
	require.Equal(t, []string{"from-file", "127.0.0.1/32", "10.0.0.1"}, src.Allow)
	require.Equal(t, []string{"10.0.0.0/8"}, src.Deny)
	require.Equal(t, []string{"listen"}, others)
	require.Error(t, fs.Parse([]string{"--source-allow", "not a host!"}), "entries are checked")
}
