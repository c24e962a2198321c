package local

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/content"
)

var safeRef = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// FuzzStoreRefs drives the store with fuzzed refs and digests: nothing may
// be created, changed or removed outside its root, and only well-formed refs
// and sha256 digests are accepted.
func FuzzStoreRefs(f *testing.F) {
	hex := strings.Repeat("ab", 32)
	for _, s := range [][2]string{
		{"task-1", "sha256:" + hex}, {"..", "sha256:../../outside/victim"}, {".", ""}, {"../outside", "sha256:" + hex},
		{"a/b", "md5:d41d8cd98f00b204e9800998ecf8427e"}, {"/etc/passwd", "sha256:"}, {"a\x00b", "sha256:" + strings.ToUpper(hex)},
		{"..%2F..%2Fetc%2Fpasswd", "sha256:" + hex[:63]}, {strings.Repeat("r", 129), "sha256:" + hex + "0"},
		{"sha256-" + hex, "sha512:" + hex + hex}, {"...", "sha256:" + hex}, {"a\\b", "sha256:" + hex},
	} {
		f.Add(s[0], s[1], []byte("data"))
	}
	parent := f.TempDir()
	root := filepath.Join(parent, "root")
	victim := filepath.Join(parent, "outside", "victim")
	if err := os.MkdirAll(filepath.Dir(victim), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		f.Fatal(err)
	}
	s, err := New(root)
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()

	f.Fuzz(func(t *testing.T, ref, dgst string, data []byte) {
		d := digest.Digest(dgst)
		refOK := safeRef.MatchString(ref) && ref != "." && ref != ".."
		digestOK := strings.HasPrefix(dgst, "sha256:") && d.Validate() == nil

		w, err := s.Writer(ctx, ref)
		if !refOK {
			if err == nil || !errors.Is(err, content.ErrInvalid) {
				t.Fatalf("Writer(%q) = %v, want ErrInvalid", ref, err)
			}
		} else {
			if err != nil {
				t.Fatalf("Writer(%q): %v", ref, err)
			}
			if _, err := w.Write(data); err != nil {
				t.Fatalf("Write: %v", err)
			}
			err := w.Commit(ctx, int64(len(data)), d)
			switch {
			case d == "" || d == digest.FromBytes(data):
				if err != nil && !errors.Is(err, content.ErrAlreadyExists) {
					t.Fatalf("Commit(%q) of matching data: %v", d, err)
				}
			case err == nil:
				t.Fatalf("Commit(%q) accepted data with digest %s", d, digest.FromBytes(data))
			}
			_ = w.Close()
		}
		for _, err := range []error{
			func() error { _, err := s.Info(ctx, d); return err }(),
			func() error { _, err := s.ReaderAt(ctx, d); return err }(),
			s.Delete(ctx, d),
		} {
			if !digestOK && !errors.Is(err, content.ErrInvalid) {
				t.Fatalf("digest %q: %v, want ErrInvalid", dgst, err)
			}
		}
		if _, err := s.Status(ctx, ref); !refOK && !errors.Is(err, content.ErrInvalid) {
			t.Fatalf("Status(%q) = %v, want ErrInvalid", ref, err)
		}
		if err := s.Abort(ctx, ref); !refOK && !errors.Is(err, content.ErrInvalid) {
			t.Fatalf("Abort(%q) = %v, want ErrInvalid", ref, err)
		}

		// Nothing outside root: parent holds root and the untouched victim only.
		if b, err := os.ReadFile(victim); err != nil || string(b) != "keep" {
			t.Fatalf("file outside the root changed: %q, %v", b, err)
		}
		err = filepath.WalkDir(parent, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			switch rel, _ := filepath.Rel(parent, p); {
			case rel == ".", rel == "root", strings.HasPrefix(rel, "root"+string(filepath.Separator)),
				rel == "outside", rel == filepath.Join("outside", "victim"):
				return nil
			default:
				t.Fatalf("ref %q, digest %q: %s created outside the root", ref, dgst, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
