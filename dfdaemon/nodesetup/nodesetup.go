// Package nodesetup points a node's containerd at its dfdaemon: it writes
// containerd's registry host files (hosts.toml, one directory per registry
// under containerd's config_path) naming dfdaemon's mirror as the first host
// for pulls, with the registry itself as the fallback, and undoes it.
//
// It never restarts containerd: containerd reads hosts.toml afresh for every
// pull. Every file it changes keeps what it said (the mirror's host table is
// added in front of the registry's own host tables) and is backed up first
// (<file>.damselfly-backup); every file it creates is marked. Setup is
// idempotent: a second run changes nothing. Undo restores every changed file
// byte for byte from its backup and removes the files (and the directories)
// it created.
package nodesetup

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Marker lines of the files setup writes.
const (
	markerBegin   = "# >>> damselfly: dfdaemon setup-containerd"
	markerEnd     = "# <<< damselfly"
	markerCreated = "# created by dfdaemon setup-containerd; --undo removes this file"
	backupSuffix  = ".damselfly-backup"
)

// Options says what to set up.
type Options struct {
	// HostsDir is containerd's registry config_path (e.g. /etc/containerd/certs.d).
	HostsDir string
	// Mirror is the URL of the node's dfdaemon mirror (http://127.0.0.1:65001).
	Mirror string
	// Registries are the registries to mirror: host[:port] (https), or
	// http://host:port for a plain-http registry; "docker.io" is served
	// by registry-1.docker.io.
	Registries []string
	// Undo restores what setup changed instead.
	Undo bool
}

// Change is one file setup or undo touched.
type Change struct {
	Path   string
	Action string // "created", "updated", "unchanged", "restored", "removed"
}

// registry is one parsed Registries entry.
type registry struct {
	dir    string // directory name under HostsDir: host[:port]
	server string // the registry's own URL, the fallback
}

// parseRegistry reads host[:port] or http(s)://host[:port].
func parseRegistry(s string) (registry, error) {
	s = strings.TrimSpace(s)
	scheme := "https"
	if i := strings.Index(s, "://"); i >= 0 {
		scheme, s = strings.ToLower(s[:i]), s[i+3:]
		if scheme != "http" && scheme != "https" {
			return registry{}, fmt.Errorf("registry %q: scheme must be http or https", s)
		}
	}
	s = strings.TrimSuffix(s, "/")
	if s == "" || strings.ContainsAny(s, "/?#@ \t") || s == "." || s == ".." {
		return registry{}, fmt.Errorf("registry %q: want host[:port] or http://host:port", s)
	}
	if h, p, err := net.SplitHostPort(s); err == nil {
		if h == "" || p == "" {
			return registry{}, fmt.Errorf("registry %q: want host[:port]", s)
		}
	}
	server := scheme + "://" + s
	if s == "docker.io" {
		server = "https://registry-1.docker.io"
	}
	return registry{dir: s, server: server}, nil
}

// checkMirror validates the dfdaemon mirror URL.
func checkMirror(m string) (string, error) {
	u, err := url.Parse(m)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return "", fmt.Errorf("mirror %q: want http://host:port of dfdaemon's mirror", m)
	}
	return u.Scheme + "://" + u.Host, nil
}

// Run sets up (or, with o.Undo, undoes) every registry of o and returns
// what it did to each file.
func Run(o Options) ([]Change, error) {
	if o.HostsDir == "" {
		return nil, errors.New("--hosts-dir is required")
	}
	if len(o.Registries) == 0 {
		return nil, errors.New("--registries is required")
	}
	var regs []registry
	for _, s := range o.Registries {
		if strings.TrimSpace(s) == "" {
			continue
		}
		r, err := parseRegistry(s)
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(regs, func(x registry) bool { return x.dir == r.dir }) {
			regs = append(regs, r)
		}
	}
	if o.Undo {
		var changes []Change
		for _, r := range regs {
			c, err := undo(filepath.Join(o.HostsDir, r.dir))
			if err != nil {
				return changes, err
			}
			changes = append(changes, c...)
		}
		return changes, nil
	}
	mirror, err := checkMirror(o.Mirror)
	if err != nil {
		return nil, err
	}
	var changes []Change
	for _, r := range regs {
		c, err := setup(filepath.Join(o.HostsDir, r.dir), r, mirror)
		if err != nil {
			return changes, err
		}
		changes = append(changes, c)
	}
	return changes, nil
}

// mirrorBlock is the host table setup adds for the mirror.
func mirrorBlock(mirror string) string {
	return markerBegin + "\n" +
		"[host.\"" + mirror + "\"]\n" +
		"  capabilities = [\"pull\", \"resolve\"]\n" +
		markerEnd + "\n"
}

func setup(dir string, r registry, mirror string) (Change, error) {
	path := filepath.Join(dir, "hosts.toml")
	old, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return Change{}, err
		}
		body := markerCreated + "\n" + "server = \"" + r.server + "\"\n\n" + mirrorBlock(mirror)
		if err := writeAtomic(path, []byte(body), 0o644); err != nil {
			return Change{}, err
		}
		return Change{path, "created"}, nil
	case err != nil:
		return Change{}, err
	}
	next := withMirror(old, r, mirror)
	if bytes.Equal(next, old) {
		return Change{path, "unchanged"}, nil
	}
	created := bytes.HasPrefix(old, []byte(markerCreated))
	if !created {
		// Back up the file as it was before setup first touched it.
		backup := path + backupSuffix
		if _, err := os.Stat(backup); errors.Is(err, fs.ErrNotExist) {
			fi, err := os.Stat(path)
			if err != nil {
				return Change{}, err
			}
			if err := writeAtomic(backup, old, fi.Mode().Perm()); err != nil {
				return Change{}, err
			}
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Change{}, err
	}
	if err := writeAtomic(path, next, fi.Mode().Perm()); err != nil {
		return Change{}, err
	}
	return Change{path, "updated"}, nil
}

// withMirror returns the file with the mirror's host table, in front of
// any other host table: replaced where setup wrote one before, inserted
// before the first table (keys above it stay top-level) otherwise. A file
// that names no server gets r's, so that the registry stays the fallback.
func withMirror(old []byte, r registry, mirror string) []byte {
	s := string(old)
	block := mirrorBlock(mirror)
	if i := strings.Index(s, markerBegin); i >= 0 {
		if j := strings.Index(s[i:], markerEnd); j >= 0 {
			end := i + j + len(markerEnd)
			if end < len(s) && s[end] == '\n' {
				end++
			}
			return []byte(s[:i] + block + s[end:])
		}
	}
	lines := strings.SplitAfter(s, "\n")
	at := len(s)
	off := 0
	for _, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "[") {
			at = off
			break
		}
		off += len(l)
	}
	head, tail := s[:at], s[at:]
	if !hasServer(head) {
		head = "server = \"" + r.server + "\"\n" + head
	}
	if head != "" && !strings.HasSuffix(head, "\n") {
		head += "\n"
	}
	if head != "" && !strings.HasSuffix(head, "\n\n") {
		head += "\n"
	}
	if tail != "" {
		block += "\n"
	}
	return []byte(head + block + tail)
}

// hasServer reports whether the top-level keys name a server.
func hasServer(head string) bool {
	for _, l := range strings.Split(head, "\n") {
		l = strings.TrimSpace(l)
		if k, _, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == "server" {
			return true
		}
	}
	return false
}

func undo(dir string) ([]Change, error) {
	path := filepath.Join(dir, "hosts.toml")
	backup := path + backupSuffix
	if b, err := os.ReadFile(backup); err == nil {
		fi, err := os.Stat(backup)
		if err != nil {
			return nil, err
		}
		if err := writeAtomic(path, b, fi.Mode().Perm()); err != nil {
			return nil, err
		}
		if err := os.Remove(backup); err != nil {
			return nil, err
		}
		return []Change{{path, "restored"}}, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(b, []byte(markerCreated)) {
		return []Change{{path, "unchanged"}}, nil // not ours
	}
	if err := os.Remove(path); err != nil {
		return nil, err
	}
	_ = os.Remove(dir) // only when empty: setup created it
	return []Change{{path, "removed"}}, nil
}

// writeAtomic writes b to path through a temporary file and a rename.
func writeAtomic(path string, b []byte, perm fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.Write(b); err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
