package scheduler

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

func TestClassifyFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		reason schedapi.FailureReason
		want   failureKind
	}{
		{schedapi.ReasonCorrupt, failIntegrity},
		{schedapi.ReasonMissing, failMissing},
		{schedapi.ReasonTransfer, failTransfer},
		{schedapi.ReasonAborted, failRequester},
		{"", failTransfer},
		{"something new", failTransfer},
	}
	for _, tt := range tests {
		t.Run(string(tt.reason), func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, classifyFailure(tt.reason))
		})
	}
}

func TestStrikeRecord(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		limit      int
		kinds      []failureKind
		wantOutAt  int // 1-based failure that strikes out; 0: never
		wantFailed int
	}{
		{name: "integrity strikes at once", limit: 3, kinds: []failureKind{failIntegrity}, wantOutAt: 1, wantFailed: 1},
		{name: "one transfer failure is tolerated", limit: 2, kinds: []failureKind{failTransfer}, wantFailed: 1},
		{name: "limit transfer failures strike", limit: 2, kinds: []failureKind{failTransfer, failMissing}, wantOutAt: 2, wantFailed: 2},
		{name: "limit one", limit: 1, kinds: []failureKind{failMissing}, wantOutAt: 1, wantFailed: 1},
		{name: "integrity after a transfer failure", limit: 5, kinds: []failureKind{failTransfer, failIntegrity}, wantOutAt: 2, wantFailed: 2},
		{name: "nothing more once struck", limit: 1, kinds: []failureKind{failTransfer, failTransfer, failIntegrity}, wantOutAt: 1, wantFailed: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var rec strikeRecord
			outAt := 0
			for i, k := range tt.kinds {
				var out bool
				rec, out = strike(rec, k, tt.limit)
				if out {
					require.Zero(t, outAt, "struck out twice")
					outAt = i + 1
				}
			}
			require.Equal(t, tt.wantOutAt, outAt)
			require.Equal(t, tt.wantOutAt > 0, rec.struck)
			require.Equal(t, tt.wantFailed, rec.failures)
		})
	}
}

// TestReportStrikes drives striking through reports: requester r fetches
// from source a (the only peer holding everything) and reports failures.
func TestReportStrikes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// reasons are the failures r reports, one per assignment from a.
		reasons    []schedapi.FailureReason
		wantStruck bool
		// wantAvoided: r is no longer sent to a, struck or not.
		wantAvoided bool
		// wantHeld is whether a still counts as holding piece 0, the
		// first piece it failed.
		wantHeld bool
	}{
		// One requester's corrupt report is not enough (TestCorruptReports).
		{name: "one corrupt report does not strike", reasons: []schedapi.FailureReason{schedapi.ReasonCorrupt}, wantHeld: true, wantAvoided: true},
		{name: "one transfer failure is tolerated", reasons: []schedapi.FailureReason{schedapi.ReasonTransfer}, wantHeld: true},
		{name: "strike limit failures strike", reasons: []schedapi.FailureReason{schedapi.ReasonTransfer, ""}, wantStruck: true, wantHeld: true},
		{name: "missing drops the piece", reasons: []schedapi.FailureReason{schedapi.ReasonMissing}, wantHeld: false},
		{name: "requester aborts do not count", reasons: []schedapi.FailureReason{schedapi.ReasonAborted, schedapi.ReasonAborted, schedapi.ReasonAborted}, wantHeld: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fix := fixture{pieces: 4, holders: map[string][]int{"a": {0, 1, 2, 3}}}
			st, tk := fix.build(t, Config{StrikeLimit: 2})
			_, err := st.join(tk.id, peerAt("r", 2), nil)
			require.NoError(t, err)
			r, a := tk.members["r"], tk.members["a"]
			for i, reason := range tt.reasons {
				got := st.assign(tk, r, 1)
				require.Len(t, got, 1)
				require.Equal(t, "a", got[0].From.ID, "failure %d", i)
				require.Equal(t, 1, a.peer.uploading)
				require.NoError(t, st.report(tk.id, "r", []schedapi.PieceResult{{Piece: got[0].Piece, From: "a", Reason: reason}}))
				require.Zero(t, a.peer.uploading, "the failure frees the slot")
				require.Empty(t, r.inflight)
			}
			require.Equal(t, tt.wantStruck, tk.isStruck("a"))
			require.Equal(t, tt.wantHeld, a.have.Has(0))

			// Whom does r fetch from now? A struck a is never a source; the
			// CDN serves instead.
			got := st.assign(tk, r, 4)
			require.NotEmpty(t, got)
			for _, g := range got {
				if tt.wantStruck || tt.wantAvoided || (g.Piece == 0 && !tt.wantHeld) {
					require.True(t, g.FromCDN, "piece %d from %s", g.Piece, g.From.ID)
				} else {
					require.Equal(t, "a", g.From.ID, "piece %d", g.Piece)
				}
			}
			st.sweep() // nothing expires: the clock does not move
			require.Equal(t, tt.wantStruck, tk.status().Peers[0].Struck)
		})
	}
}

func TestReportStrikeRules(t *testing.T) {
	t.Parallel()
	fix := fixture{pieces: 4, holders: map[string][]int{"a": {0, 1, 2, 3}, "b": {0, 1, 2, 3}}}

	t.Run("the cdn is never struck", func(t *testing.T) {
		t.Parallel()
		st, tk := fixture{pieces: 4}.build(t, Config{StrikeLimit: 1})
		_, err := st.join(tk.id, peerAt("r", 2), nil)
		require.NoError(t, err)
		for range 3 {
			got := st.assign(tk, tk.members["r"], 1)
			require.Len(t, got, 1)
			require.True(t, got[0].FromCDN)
			require.Equal(t, 1, st.cdnBusy)
			require.NoError(t, st.report(tk.id, "r", []schedapi.PieceResult{{Piece: got[0].Piece, From: cdnPeer.ID, Reason: schedapi.ReasonCorrupt, Error: "digest mismatch"}}))
			require.Zero(t, st.cdnBusy)
		}
		require.False(t, tk.isStruck(cdnPeer.ID))
	})

	t.Run("only the assigned source is struck", func(t *testing.T) {
		t.Parallel()
		st, tk := fix.build(t, Config{StrikeLimit: 1})
		_, err := st.join(tk.id, peerAt("r", 2), nil)
		require.NoError(t, err)
		got := st.assign(tk, tk.members["r"], 1)
		require.Len(t, got, 1)
		other := "a"
		if got[0].From.ID == "a" {
			other = "b"
		}
		// r blames a peer it was not sent to: no one is struck, but the
		// assignment is over.
		require.NoError(t, st.report(tk.id, "r", []schedapi.PieceResult{{Piece: got[0].Piece, From: other, Reason: schedapi.ReasonCorrupt, Error: "digest mismatch"}}))
		require.False(t, tk.isStruck("a"))
		require.False(t, tk.isStruck("b"))
		require.Empty(t, tk.members["r"].inflight)
		// Failures without an assignment strike no one either.
		require.NoError(t, st.report(tk.id, "r", []schedapi.PieceResult{{Piece: 3, From: "a", Reason: schedapi.ReasonCorrupt, Error: "digest mismatch"}}))
		require.False(t, tk.isStruck("a"))
	})

	t.Run("strikes survive leaving and joining again", func(t *testing.T) {
		t.Parallel()
		st, tk := fix.build(t, Config{StrikeLimit: 1})
		tk.strikes["a"] = strikeRecord{failures: 1, struck: true}
		for _, i := range tk.members["a"].have.Indices() {
			st.unlistHolder(tk, i, tk.members["a"])
		}
		require.NoError(t, st.leave(tk.id, "a"))
		_, err := st.join(tk.id, peerAt("a", 3), tk.members["b"].have.Clone())
		require.NoError(t, err)
		require.True(t, tk.isStruck("a"))
		for i := range 4 {
			require.NotContains(t, tk.holders[i], tk.members["a"])
		}
		_, err = st.join(tk.id, peerAt("r", 2), nil)
		require.NoError(t, err)
		for _, g := range st.assign(tk, tk.members["r"], 4) {
			require.NotEqual(t, "a", g.From.ID)
		}
	})
}
