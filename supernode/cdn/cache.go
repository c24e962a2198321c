package cdn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// pieceMeta is what the CDN keeps next to a committed blob: enough to serve
// a task for that content without reading the source or the blob again.
type pieceMeta struct {
	Digest    digest.Digest   `json:"digest"`
	Size      int64           `json:"size"`
	PieceSize int64           `json:"pieceSize"`
	Pieces    []digest.Digest `json:"pieces"`
}

// validFor reports whether m describes a blob of digest d and size bytes,
// cut with the current piece size policy.
func (m pieceMeta) validFor(d digest.Digest, size int64) bool {
	if m.Digest != d || m.Size != size || m.PieceSize != piece.SizeFor(size) || len(m.Pieces) != piece.Count(size, m.PieceSize) {
		return false
	}
	for _, pd := range m.Pieces {
		if piece.ValidateDigest(pd) != nil {
			return false
		}
	}
	return true
}

// taskRecord maps a URL task to the digest of its content.
type taskRecord struct {
	TaskID taskid.ID     `json:"taskId"`
	Digest digest.Digest `json:"digest"`
	// URL is the source without userinfo or query, for operators.
	URL string `json:"url,omitempty"`
}

// cache is the CDN's metadata directory:
//
//	<dir>/meta/<hex>.json    pieceMeta of committed blob sha256:<hex>
//	<dir>/tasks/<task>.json  taskRecord of a URL task
//
// Files are written atomically (temporary file, fsync, rename).
type cache struct {
	metaDir, taskDir string
}

// newCache opens the metadata directory. Temporary files a crash left
// behind (writeFileAtomic's, never renamed) are removed.
func newCache(dir string, log *zap.Logger) (*cache, error) {
	c := &cache{metaDir: filepath.Join(dir, "meta"), taskDir: filepath.Join(dir, "tasks")}
	for _, d := range []string{dir, c.metaDir, c.taskDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("cdn dir: %w", err)
		}
		entries, err := os.ReadDir(d)
		if err != nil {
			return nil, fmt.Errorf("cdn dir: %w", err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tempPrefix) || e.IsDir() {
				continue
			}
			if err := os.Remove(filepath.Join(d, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("cdn dir: remove leftover temporary file: %w", err)
			}
			log.Info("leftover temporary file removed", zap.String("file", filepath.Join(d, e.Name())))
		}
	}
	return c, nil
}

func (c *cache) metaPath(d digest.Digest) (string, error) {
	if err := piece.ValidateDigest(d); err != nil {
		return "", fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	return filepath.Join(c.metaDir, d.Encoded()+".json"), nil
}

func (c *cache) readMeta(d digest.Digest) (pieceMeta, error) {
	var m pieceMeta
	p, err := c.metaPath(d)
	if err != nil {
		return m, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("piece metadata %s: %w", d, err)
	}
	return m, nil
}

func (c *cache) writeMeta(m pieceMeta) error {
	p, err := c.metaPath(m.Digest)
	if err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p, b); err != nil {
		return fmt.Errorf("write piece metadata %s: %w", m.Digest, err)
	}
	return nil
}

func (c *cache) removeMeta(d digest.Digest) error {
	p, err := c.metaPath(d)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove piece metadata %s: %w", d, err)
	}
	return nil
}

func (c *cache) taskPath(taskID taskid.ID) string {
	return filepath.Join(c.taskDir, taskID.FileName()+".json")
}

// taskDigest returns the content digest recorded for a URL task.
func (c *cache) taskDigest(taskID taskid.ID) (digest.Digest, bool) {
	b, err := os.ReadFile(c.taskPath(taskID))
	if err != nil {
		return "", false
	}
	var r taskRecord
	if json.Unmarshal(b, &r) != nil || r.TaskID != taskID || piece.ValidateDigest(r.Digest) != nil {
		return "", false
	}
	return r.Digest, true
}

// tasksFor returns the URL tasks recorded with content digest d.
func (c *cache) tasksFor(d digest.Digest) []taskid.ID {
	entries, err := os.ReadDir(c.taskDir)
	if err != nil {
		return nil
	}
	var out []taskid.ID
	for _, e := range entries {
		if e.IsDir() || filepath.Ext(e.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(c.taskDir, e.Name()))
		if err != nil {
			continue
		}
		var r taskRecord
		if json.Unmarshal(b, &r) == nil && r.Digest == d {
			out = append(out, r.TaskID)
		}
	}
	return out
}

func (c *cache) writeTask(r taskRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(c.taskPath(r.TaskID), b); err != nil {
		return fmt.Errorf("write task record %s: %w", r.TaskID, err)
	}
	return nil
}

func (c *cache) removeTask(taskID taskid.ID) error {
	if err := os.Remove(c.taskPath(taskID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove task record %s: %w", taskID, err)
	}
	return nil
}

// metaFor returns the piece metadata of committed blob d, checked against
// the blob by this process (see checkContent: the first call after a start
// hashes the blob, rebuilds metadata that is missing, stale or wrong, and
// removes content that fails). It returns an error wrapping
// content.ErrNotFound when the blob is not in the store or failed.
func (c *CDN) metaFor(ctx context.Context, d digest.Digest) (pieceMeta, error) {
	info, err := c.store.Info(ctx, d)
	if err != nil {
		return pieceMeta{}, err
	}
	if m, ok := c.checkedMeta(d); ok && m.Size == info.Size {
		return m, nil
	}
	return c.checkContent(ctx, d, nil)
}

// tempPrefix starts the names of the CDN's temporary files; newCache
// removes those a crash left.
const tempPrefix = ".tmp-"

// writeFileAtomic writes data to path through a temporary file and a rename.
// The directory is created when it is missing (an operator may have wiped
// the data directory under a running supernode).
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
