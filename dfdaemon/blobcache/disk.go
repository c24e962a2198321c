package blobcache

import (
	"errors"

	"github.com/damselfly/damselfly/pkg/diskspace"
)

// rooter is the part of the store that says where it lives (*local.Store).
type rooter interface{ Root() string }

// disk reports the space of the filesystem holding the store.
func (c *Cache) disk() (diskspace.Space, error) {
	r, ok := c.store.(rooter)
	if !ok {
		return diskspace.Space{}, errors.New("store has no root directory")
	}
	return diskspace.Of(r.Root())
}
