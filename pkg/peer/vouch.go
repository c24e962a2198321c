package peer

import (
	"context"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

const (
	// vouchWait bounds how long a peer holding every piece waits for the
	// supernode to finish verifying the whole content (its CDN commits a
	// moment after it published the last piece). Past it the peer hashes
	// the content itself.
	vouchWait = 10 * time.Second
	// vouchPoll is the long poll's wait while it waits; the supernode
	// answers as soon as the task's state changes.
	vouchPoll = time.Second
)

// awaitVouch reports whether the supernode vouches for this peer's pieces:
// the task succeeded there (its CDN verified the whole content) and the
// digests its pieces were checked against list to the supernode's
// PiecesDigest. Then the pieces, each verified, are the verified content,
// and commit skips hashing it a second time. It waits for the task to
// succeed, within vouchWait; false (the supernode does not vouch, or says
// nothing in time) leaves the hashing to the content store's Commit.
func (t *task) awaitVouch(ctx context.Context) bool {
	t.ioMu.RLock()
	_, ok := t.w.(content.VouchedWriter)
	t.ioMu.RUnlock()
	if !ok {
		return false
	}
	deadline := time.Now().Add(vouchWait)
	for wait := time.Duration(0); ; wait = vouchPoll {
		t.mu.Lock()
		info := t.info
		mine := digest.Digest("")
		if n := piece.Count(info.Size, info.PieceSize); n >= 0 && len(t.pieceDigests) == n {
			mine = piece.ListDigest(t.pieceDigests)
		}
		t.mu.Unlock()
		switch {
		case mine == "":
			return false
		case info.State == schedapi.TaskSucceeded:
			if info.PiecesDigest != mine.String() {
				t.log.Warn("the supernode's piece digests differ from those the pieces were verified against: hashing the content",
					zap.String("supernode", info.PiecesDigest), zap.Stringer("peer", mine))
				return false
			}
			return true
		case info.State == schedapi.TaskFailed:
			return false
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			t.log.Debug("the supernode did not confirm the content in time: hashing it")
			return false
		}
		// Ask for nothing (no wanted pieces, no others): the poll comes
		// back with the task's info when its state changes.
		resp, err := t.e.sched.Pieces(ctx, t.id, t.e.self.ID, 1, min(wait, left), schedapi.Want{Background: 0})
		if err != nil {
			t.log.Debug("poll for the content's confirmation", zap.Error(err))
			select {
			case <-ctx.Done():
				return false
			case <-time.After(min(vouchPoll, left)):
			}
			continue
		}
		if err := t.updateInfo(resp.TaskInfo); err != nil {
			return false
		}
	}
}
