package schedapi

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/taskid"
)

func TestValidateFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file string
		ok         bool
	}{
		{"empty: the only file", "", true},
		{"name", "disk.iso", true},
		{"path", "Big Set/cd 1/disk.iso", true},
		{"unicode", "данные/файл.bin", true},
		{"longest", strings.Repeat("a", MaxFileLen), true},
		{"too long", strings.Repeat("a", MaxFileLen+1), false},
		{"absolute", "/etc/passwd", false},
		{"dot dot", "a/../../b", false},
		{"dot", "./a", false},
		{"empty element", "a//b", false},
		{"trailing slash", "a/", false},
		{"newline", "a\nb", false},
		{"nul", "a\x00b", false},
		{"invalid utf-8", "a\xffb", false},
	}
	require.NoError(t, ValidateFile("https://files.test/a.iso", ""))
	require.NoError(t, ValidateFile("torrent+https://files.test/set.torrent", "a.iso"))
	// A file names a file of a torrent, digest or not (taskid.Derive
	// names a digest task by its digest alone).
	require.ErrorIs(t, ValidateFile("https://files.test/a.iso", "a.iso"), ErrInvalidFile)
	const link = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := ValidateFile(link, tt.file)
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrInvalidFile)
			}
		})
	}
}

// The file of a torrent names the task: two files of one torrent are two
// tasks, and a file on a URL that is no torrent names none.
func TestRegisterRequestTaskIDFile(t *testing.T) {
	t.Parallel()
	const link = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=set"
	a, err := RegisterRequest{URL: link, File: "set/a.iso"}.TaskID()
	require.NoError(t, err)
	want, err := taskid.ForTorrent(link, "set/a.iso", "")
	require.NoError(t, err)
	require.Equal(t, want, a)
	b, err := RegisterRequest{URL: link + "&tr=https://t.test/announce", File: "set/b.iso"}.TaskID()
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	whole, err := RegisterRequest{URL: link}.TaskID()
	require.NoError(t, err)
	require.NotEqual(t, a, whole)

	_, err = RegisterRequest{URL: "https://files.test/a.iso", File: "a.iso"}.TaskID()
	require.ErrorIs(t, err, taskid.ErrInvalid)
}
