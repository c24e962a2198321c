package schedapi

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/damselfly/damselfly/pkg/redact"
)

// MaxFileLen is the longest torrent file path (RegisterRequest.File).
const MaxFileLen = 4 << 10

// ErrInvalidFile is wrapped by every error of ValidateFile.
var ErrInvalidFile = errors.New("invalid torrent file")

// ValidateFile checks the file of a torrent a request names
// (RegisterRequest.File, dfget --bt-file, a torrent preheat's file): empty
// (the torrent's only file), or a relative path as the torrent lists it,
// its elements separated by "/", none of them empty, "." or "..", at most
// MaxFileLen bytes of UTF-8 without control characters. Whether the URL is a
// torrent at all is taskid.Derive's rule; whether the torrent has the file
// only the supernode's CDN can tell.
func ValidateFile(file string) error {
	if file == "" {
		return nil
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
