package schedapi

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/redact"
)

// MaxFileLen is the longest torrent file path (RegisterRequest.File).
const MaxFileLen = 4 << 10

// ErrInvalidFile is wrapped by every error of ValidateFile.
var ErrInvalidFile = errors.New("invalid torrent file")

// ValidateFile checks the file of a torrent a request names with its URL
// (RegisterRequest.File, dfget --bt-file, a torrent preheat's file): empty
// (the torrent's only file, or no torrent at all), or, with a URL that is a
// BitTorrent source (btlink.IsLink), a relative path as the torrent lists
// it, its elements separated by "/", none of them empty, "." or "..", at
// most MaxFileLen bytes of UTF-8 without control characters. Whether the
// torrent has the file only the supernode's CDN can tell.
func ValidateFile(url, file string) error {
	if file == "" {
		return nil
	}
	if !btlink.IsLink(url) {
		return fmt.Errorf("torrent file %q: %s is no torrent (a magnet link or a torrent+http(s) url): %w", redact.Truncate(file), redact.URL(url), ErrInvalidFile)
	}
	if len(file) > MaxFileLen {
		return fmt.Errorf("torrent file: longer than %d bytes: %w", MaxFileLen, ErrInvalidFile)
	}
	if !utf8.ValidString(file) || strings.ContainsFunc(file, unicode.IsControl) {
		return fmt.Errorf("torrent file %q: must be UTF-8 without control characters: %w", redact.Truncate(file), ErrInvalidFile)
	}
	for elem := range strings.SplitSeq(file, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return fmt.Errorf("torrent file %q: must be a relative path (a/b.iso) without empty, . or .. elements: %w", redact.Truncate(file), ErrInvalidFile)
		}
	}
	return nil
}
