package blobcache

import "github.com/damselfly/damselfly/pkg/bytesize"

// ByteSize is the size type of the cache's keys (quota, scrubRate): the
// one size grammar of pkg/bytesize ("20GiB", "512MiB", "10G", "1000").
type ByteSize = bytesize.Size

// ParseByteSize parses a size such as "10GiB" or "1048576" (bytesize.Parse).
func ParseByteSize(s string) (ByteSize, error) { return bytesize.Parse(s) }
