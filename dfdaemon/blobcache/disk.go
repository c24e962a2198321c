package blobcache

import "errors"

// diskSpace is the size and free space of a filesystem, in bytes.
type diskSpace struct {
	total, free int64
}

// rooter is the part of the store that says where it lives (*local.Store).
type rooter interface{ Root() string }

// disk reports the space of the filesystem holding the store.
func (c *Cache) disk() (diskSpace, error) {
	if c.statfs == nil {
		return diskSpace{}, errors.New("no filesystem to measure")
	}
	r, ok := c.store.(rooter)
	if !ok {
		return diskSpace{}, errors.New("store has no root directory")
	}
	return c.statfs(r.Root())
}
