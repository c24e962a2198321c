// Package command is the command-line plumbing the binaries share (the
// long-running supernode, dfdaemon and registry-cache, and dfget where it
// applies): parsing flags, reading a YAML config strictly, building the
// logger, checking a data dir and a host:port, telling a clean stop from a
// failure, and the daemon skeleton (daemon.go: metrics registry, /healthz,
// /metrics, the HTTP server and its bounded shutdown beside the
// components). Each binary's cmd package keeps its own flags, Config and
// wiring.
package command

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/version"
)

// ParseArgs parses args with fs. It answers --help (fs prints the usage)
// and, when fs has a "version" flag, --version (the binary's version, named
// by fs.Name(), on fs.Output()) itself: done is then true, with no error,
// and the caller returns at once. Positional arguments are an error: the
// binaries take none.
func ParseArgs(fs *flag.FlagSet, args []string) (done bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, fmt.Errorf("command line: %w", err)
	}
	if fs.NArg() > 0 {
		return false, fmt.Errorf("command line: unexpected argument %q", fs.Arg(0))
	}
	if v := fs.Lookup("version"); v != nil && v.Value.String() == "true" {
		fmt.Fprintln(fs.Output(), version.String(fs.Name()))
		return true, nil
	}
	return false, nil
}

// Logger returns given when it is set (a test or an embedding program chose
// the logger), else a logger built from c writing to w. sync flushes it
// at exit.
func Logger(given *zap.Logger, c log.Config, w io.Writer) (l *zap.Logger, sync func(), err error) {
	if given != nil {
		return given, func() {}, nil
	}
	l, err = log.New(c, w)
	if err != nil {
		return nil, nil, err
	}
	return l, func() { _ = l.Sync() }, nil
}

// Exit maps the error a binary's run ended with to what Run returns: a
// cancelled context is a clean stop (nil).
func Exit(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// CheckDataDir refuses a data dir that every user of the machine may write
// to: anyone could then plant or swap content, ingests, lock files or the
// generated tokens the binary keeps there. It answers with one line naming
// the fix, e.g. "data dir /x is world-writable (mode 0777): fix with chmod
// o-w /x". A dir that does not exist yet is fine (the binary creates it
// 0750); a path that is not a directory is an error. Only the dir itself is
// checked, not its parents. Every binary with a data dir calls it at start,
// before it reads or writes anything there.
func CheckDataDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	name := dir
	if abs, err := filepath.Abs(dir); err == nil {
		name = abs
	}
	if !fi.IsDir() {
		return fmt.Errorf("data dir %s is not a directory", name)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return fmt.Errorf("data dir %s is world-writable (mode %#o): fix with chmod o-w %s", name, unixMode(fi.Mode()), name)
	}
	return nil
}

// unixMode is m's permission bits with setuid, setgid and sticky in their
// octal places, as ls and chmod write them.
func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// ListFlag is a repeatable command-line flag of strings; each value may
// also be a comma-separated list. Blank entries are dropped.
type ListFlag struct{ List *[]string }

func (f ListFlag) String() string {
	if f.List == nil {
		return ""
	}
	return strings.Join(*f.List, ",")
}

// Set appends the entries of v.
func (f ListFlag) Set(v string) error {
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*f.List = append(*f.List, s)
		}
	}
	return nil
}
