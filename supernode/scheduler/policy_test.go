package scheduler

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// flight is an assignment in flight in a policy fixture: piece to peer to,
// from peer from ("" for the CDN).
type flight struct {
	to    string
	piece int
	from  string
}

// fixture describes a task's state for the policy, built through the same
// state operations the event loop uses.
type fixture struct {
	pieces    int   // piece count; -1 for an unknown size
	published []int // published pieces; nil means all of them
	// holders lists peers and the pieces each holds; every peer named
	// anywhere in the fixture is a member.
	holders   map[string][]int
	inflight  []flight
	struck    []string
	uploading map[string]int // extra busy upload slots per peer ("cdn" for the CDN)
	// rate is the download rate every member reports, except those in
	// unrated; idle adds that many members holding nothing.
	rate    int64
	unrated []string
	idle    int
}

const fixturePieceSize = 100

func (f fixture) build(t *testing.T, cfg Config) (*state, *task) {
	t.Helper()
	st := newTestState(t, cfg)
	id := testTaskID(t.Name())
	size := int64(-1)
	if f.pieces >= 0 {
		size = int64(f.pieces)*fixturePieceSize - 1 // last piece one byte short
	}
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: fixturePieceSize, Size: size}))
	published := f.published
	if published == nil {
		for i := range f.pieces {
			published = append(published, i)
		}
	}
	for _, i := range published {
		require.NoError(t, st.publish(id, i, pieceDigest(id, i)))
	}
	port := 10000
	join := func(name string, have ...int) {
		port++
		set := &piece.Set{}
		for _, i := range have {
			set.Add(i)
		}
		sp := peerAt(name, port)
		if !slices.Contains(f.unrated, name) {
			sp.DownloadRate = f.rate
		}
		_, err := st.join(id, sp, set)
		require.NoError(t, err)
	}
	for name, have := range f.holders {
		join(name, have...)
	}
	for i := range f.idle {
		join(fmt.Sprintf("idle%d", i))
	}
	tk := st.tasks[id]
	for _, fl := range f.inflight {
		for _, name := range []string{fl.to, fl.from} {
			if name != "" && tk.members[name] == nil {
				join(name)
			}
		}
		var from *member
		if fl.from != "" {
			from = tk.members[fl.from]
		}
		st.startAssignment(tk, tk.members[fl.to], fl.piece, from)
	}
	for _, name := range f.struck {
		rec := tk.strikes[name]
		for !rec.struck {
			rec, _ = strike(rec, failIntegrity, st.cfg.StrikeLimit)
		}
		tk.strikes[name] = rec
		for _, i := range tk.members[name].have.Indices() {
			st.unlistHolder(tk, i, tk.members[name])
		}
	}
	for name, n := range f.uploading {
		if name == "cdn" {
			st.cdnBusy += n
			continue
		}
		st.addUploads(st.peers[name], n)
	}
	return st, tk
}

// chooseFor runs the configured policy for requester req (joined if not a
// member) and renders the choices as "piece<-source".
func chooseFor(t *testing.T, st *state, tk *task, req string, max int) []string {
	t.Helper()
	m := tk.members[req]
	if m == nil {
		_, err := st.join(tk.id, peerAt(req, 9999), nil)
		require.NoError(t, err)
		m = tk.members[req]
	}
	chosen := st.policy.choose(tk, m, max, st.slots())
	out := []string{}
	for _, c := range chosen {
		src := "cdn"
		if c.from != nil {
			src = c.from.peer.id
		}
		out = append(out, fmt.Sprintf("%d<-%s", c.piece, src))
	}
	return out
}

func TestRarestFirstPolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		fix  fixture
		req  string
		max  int
		want []string
	}{
		{
			name: "nothing published",
			fix:  fixture{pieces: 4, published: []int{}, holders: map[string][]int{"a": {0, 1}}},
			req:  "r", max: 4,
			want: []string{},
		},
		{
			name: "everything held",
			fix:  fixture{pieces: 3, holders: map[string][]int{"r": {0, 1, 2}, "a": {0}}},
			req:  "r", max: 4,
			want: []string{},
		},
		{
			name: "everything held or in flight",
			fix: fixture{pieces: 3, holders: map[string][]int{"r": {0, 2}, "a": {1}},
				inflight: []flight{{to: "r", piece: 1, from: "a"}}},
			req: "r", max: 4,
			want: []string{},
		},
		{
			name: "only the cdn has pieces: lowest index first",
			fix:  fixture{pieces: 5},
			req:  "r", max: 3,
			want: []string{"0<-cdn", "1<-cdn", "2<-cdn"},
		},
		{
			name: "rarest first, then by fewest uploads",
			fix: fixture{pieces: 4, holders: map[string][]int{
				"a": {0, 1, 2}, "b": {0, 1}, "c": {0},
			}},
			req: "r", max: 4,
			// 3 has no peer holder, 2 one, 1 two, 0 three. a takes 2, so b
			// (less loaded) takes 1, and c takes 0.
			want: []string{"3<-cdn", "2<-a", "1<-b", "0<-c"},
		},
		{
			name: "ties by lowest index",
			fix:  fixture{pieces: 6, holders: map[string][]int{"a": {5, 4, 3, 2, 1, 0}}},
			req:  "r", max: 2,
			want: []string{"0<-a", "1<-a"},
		},
		{
			name: "in-flight assignments count in rarity",
			cfg:  Config{PeerUploadSlots: 10},
			fix: fixture{pieces: 3, holders: map[string][]int{"a": {0, 1, 2}}, inflight: []flight{
				{to: "x", piece: 0, from: "a"}, {to: "y", piece: 0, from: "a"}, {to: "z", piece: 1, from: "a"},
			}},
			req: "r", max: 3,
			// rarity: 0 -> 1+2, 1 -> 1+1, 2 -> 1.
			want: []string{"2<-a", "1<-a", "0<-a"},
		},
		{
			name: "super-seed: the cdn serves a piece to one peer at a time",
			cfg:  Config{CDNPieceFanout: 1},
			fix: fixture{pieces: 4, inflight: []flight{
				{to: "x", piece: 0, from: ""}, {to: "y", piece: 2, from: ""},
			}},
			req: "r", max: 4,
			want: []string{"1<-cdn", "3<-cdn"},
		},
		{
			name: "holders and flights add up",
			fix: fixture{pieces: 2, holders: map[string][]int{"a": {0}, "b": {1}, "c": {1}},
				inflight:  []flight{{to: "x", piece: 0, from: "a"}, {to: "y", piece: 0, from: "a"}},
				uploading: map[string]int{"b": 1}},
			req: "r", max: 2,
			// rarity: 0 -> 1 holder + 2 flights = 3, 1 -> 2 holders (c is
			// less busy than b).
			want: []string{"1<-c", "0<-a"},
		},
		{
			name: "super-seed: busy holders are not replaced by the cdn",
			cfg:  Config{PeerUploadSlots: 2, CDNPieceFanout: 1},
			fix: fixture{pieces: 4, holders: map[string][]int{"a": {0, 1, 2}, "b": {1}},
				uploading: map[string]int{"a": 1}},
			req: "r", max: 4,
			// 3 is only at the CDN; 0 and 2 only at a, which has one slot
			// left, so 2 waits; 1 goes to b.
			want: []string{"3<-cdn", "0<-a", "1<-b"},
		},
		{
			name: "fanout: busy holders are helped by the cdn",
			cfg:  Config{PeerUploadSlots: 2, CDNPieceFanout: 2},
			fix: fixture{pieces: 4, holders: map[string][]int{"a": {0, 1, 2}, "b": {1}},
				uploading: map[string]int{"a": 1}},
			req: "r", max: 4,
			// as above, but 2, whose only holder has no slot left, comes
			// from the CDN.
			want: []string{"3<-cdn", "0<-a", "2<-cdn", "1<-b"},
		},
		{
			name: "fanout: the cdn serves a piece to a second peer",
			cfg:  Config{CDNPieceFanout: 2},
			fix:  fixture{pieces: 2, inflight: []flight{{to: "x", piece: 0, from: ""}}},
			req:  "r", max: 2,
			want: []string{"1<-cdn", "0<-cdn"},
		},
		{
			name: "fanout: no more than the fanout at once",
			cfg:  Config{CDNPieceFanout: 2},
			fix: fixture{pieces: 2, inflight: []flight{
				{to: "x", piece: 0, from: ""}, {to: "y", piece: 0, from: ""},
			}},
			req: "r", max: 2,
			want: []string{"1<-cdn"},
		},
		{
			name: "fanout: a holder with a free slot comes first",
			cfg:  Config{CDNPieceFanout: 4},
			fix:  fixture{pieces: 1, holders: map[string][]int{"a": {0}}, uploading: map[string]int{"a": 3}},
			req:  "r", max: 1,
			want: []string{"0<-a"},
		},
		{
			name: "fanout: slots taken in this call count",
			cfg:  Config{PeerUploadSlots: 1, CDNPieceFanout: 2},
			fix:  fixture{pieces: 2, holders: map[string][]int{"a": {0, 1}}},
			req:  "r", max: 2,
			want: []string{"0<-a", "1<-cdn"},
		},
		{
			name: "super-seed: a held piece never comes from the cdn",
			cfg:  Config{PeerUploadSlots: 1, CDNPieceFanout: 1},
			fix:  fixture{pieces: 2, holders: map[string][]int{"a": {0, 1}}},
			req:  "r", max: 2,
			want: []string{"0<-a"},
		},
		{
			name: "fanout: struck holders do not count",
			cfg:  Config{CDNPieceFanout: 2},
			fix: fixture{pieces: 1, holders: map[string][]int{"a": {0}}, struck: []string{"a"},
				inflight: []flight{{to: "x", piece: 0, from: ""}}},
			req: "r", max: 1,
			want: []string{"0<-cdn"},
		},
		{
			name: "fanout: copies of held pieces only while half the cdn's slots are free",
			cfg:  Config{CDNUploadSlots: 4, CDNPieceFanout: 4},
			fix: fixture{pieces: 2, holders: map[string][]int{"a": {0}},
				uploading: map[string]int{"a": 4, "cdn": 1}},
			req: "r", max: 2,
			// 1 is only at the CDN; 0's holder is busy, and the CDN may copy
			// it while fewer than 2 of its 4 slots are taken: 1 took one.
			want: []string{"1<-cdn"},
		},
		{
			name: "fanout: a copy of a held piece when the cdn has room",
			cfg:  Config{CDNUploadSlots: 4, CDNPieceFanout: 4},
			fix: fixture{pieces: 2, holders: map[string][]int{"a": {0, 1}},
				uploading: map[string]int{"a": 4, "cdn": 1}},
			req: "r", max: 2,
			want: []string{"0<-cdn"},
		},
		{
			name: "fanout: the cdn slot cap still holds",
			cfg:  Config{CDNUploadSlots: 2, CDNPieceFanout: 4},
			fix:  fixture{pieces: 3, uploading: map[string]int{"cdn": 1}},
			req:  "r", max: 3,
			want: []string{"0<-cdn"},
		},
		{
			name: "rates known: the cdn's rate over the fastest member's is the fanout, in a task past the slot cap",
			cfg:  Config{CDNUploadSlots: 4, CDNPieceFanout: 16, CDNUploadRate: 300},
			fix: fixture{pieces: 1, rate: 100, idle: 4, holders: map[string][]int{"r": nil}, inflight: []flight{
				{to: "x", piece: 0, from: ""}, {to: "y", piece: 0, from: ""},
			}},
			req: "r", max: 1,
			// 7 members, more than the 4 CDN slots, yet the fanout is
			// 300/100 = 3: a third copy.
			want: []string{"0<-cdn"},
		},
		{
			name: "rates known: no more copies than the rates allow",
			cfg:  Config{CDNUploadSlots: 8, CDNPieceFanout: 16, CDNUploadRate: 300},
			fix: fixture{pieces: 1, rate: 100, holders: map[string][]int{"r": nil}, inflight: []flight{
				{to: "x", piece: 0, from: ""}, {to: "y", piece: 0, from: ""}, {to: "z", piece: 0, from: ""},
			}},
			req: "r", max: 1,
			// 4 members, within the slots, but 300/100 = 3 copies at once.
			want: []string{},
		},
		{
			name: "rates known: a cdn no faster than a member super-seeds",
			cfg:  Config{CDNUploadSlots: 8, CDNPieceFanout: 16, CDNUploadRate: 100},
			fix:  fixture{pieces: 1, rate: 100, holders: map[string][]int{"r": nil}, inflight: []flight{{to: "x", piece: 0, from: ""}}},
			req:  "r", max: 1,
			want: []string{},
		},
		{
			name: "a member without a rate: the slot count decides",
			cfg:  Config{CDNUploadSlots: 4, CDNPieceFanout: 16, CDNUploadRate: 300},
			fix: fixture{pieces: 1, rate: 100, idle: 4, holders: map[string][]int{"r": nil}, unrated: []string{"idle0"}, inflight: []flight{
				{to: "x", piece: 0, from: ""},
			}},
			req: "r", max: 1,
			// 7 members past 4 slots: super-seeding, piece 0 is already on
			// its way from the CDN.
			want: []string{},
		},
		{
			name: "cdn slot cap: pieces no one can serve are skipped",
			cfg:  Config{CDNUploadSlots: 2},
			fix:  fixture{pieces: 4, holders: map[string][]int{"a": {3}}},
			req:  "r", max: 4,
			want: []string{"0<-cdn", "1<-cdn", "3<-a"},
		},
		{
			name: "every slot busy",
			cfg:  Config{CDNUploadSlots: 3, PeerUploadSlots: 1},
			fix: fixture{pieces: 3, holders: map[string][]int{"a": {0, 1, 2}},
				uploading: map[string]int{"a": 1, "cdn": 3}},
			req: "r", max: 3,
			want: []string{},
		},
		{
			name: "prefer peers over the cdn",
			fix:  fixture{pieces: 2, holders: map[string][]int{"a": {0, 1}}},
			req:  "r", max: 2,
			want: []string{"0<-a", "1<-a"},
		},
		{
			name: "fewest uploads wins over the tie-break",
			fix: fixture{pieces: 1, holders: map[string][]int{"a": {0}, "b": {0}, "c": {0}},
				uploading: map[string]int{"a": 2, "b": 1, "c": 3}},
			req: "r", max: 1,
			want: []string{"0<-b"},
		},
		{
			name: "struck peers are skipped",
			fix:  fixture{pieces: 2, holders: map[string][]int{"a": {0, 1}, "b": {1}}, struck: []string{"a"}},
			req:  "r", max: 2,
			// a struck a does not count as a holder: the CDN serves 0.
			want: []string{"0<-cdn", "1<-b"},
		},
		{
			name: "a struck requester may still download",
			fix:  fixture{pieces: 2, holders: map[string][]int{"r": {0}, "a": {1}}, struck: []string{"r"}},
			req:  "r", max: 2,
			want: []string{"1<-a"},
		},
		{
			name: "requester is never its own source",
			fix:  fixture{pieces: 3, holders: map[string][]int{"r": {0, 1}, "a": {0, 1, 2}}},
			req:  "r", max: 3,
			want: []string{"2<-a"},
		},
		{
			name: "unknown size: what is published",
			fix:  fixture{pieces: -1, published: []int{0, 1, 3}, holders: map[string][]int{"a": {1}}},
			req:  "r", max: 4,
			want: []string{"0<-cdn", "3<-cdn", "1<-a"},
		},
		{
			name: "max bounds the answer",
			fix:  fixture{pieces: 10},
			req:  "r", max: 1,
			want: []string{"0<-cdn"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st, tk := tt.fix.build(t, tt.cfg)
			require.Equal(t, tt.want, chooseFor(t, st, tk, tt.req, tt.max))
		})
	}
}

// TestRarestFirstSpreadsLoad checks that equally loaded holders share the
// work: each gets its slots filled before anyone is overloaded, and the
// tie-break sends different pieces to different holders.
func TestRarestFirstSpreadsLoad(t *testing.T) {
	t.Parallel()
	all := []int{0, 1, 2, 3, 4, 5, 6, 7}
	fix := fixture{pieces: 8, holders: map[string][]int{"a": all, "b": all, "c": all, "d": all}}
	st, tk := fix.build(t, Config{PeerUploadSlots: 2})
	got := chooseFor(t, st, tk, "r", 8)
	require.Len(t, got, 8)
	per := map[string]int{}
	for _, g := range got {
		var p int
		var src string
		_, err := fmt.Sscanf(g, "%d<-%s", &p, &src)
		require.NoError(t, err)
		per[src]++
	}
	require.Equal(t, map[string]int{"a": 2, "b": 2, "c": 2, "d": 2}, per)

	// The same state gives the same answer: the tie-break is deterministic.
	require.Equal(t, got, chooseFor(t, st, tk, "r", 8))

	// With unlimited slots, the first holder by tie-break still differs
	// between pieces.
	st2, tk2 := fix.build(t, Config{PeerUploadSlots: 100})
	first := map[string]bool{}
	for i := range 8 {
		m := tk2.members["r2"]
		if m == nil {
			_, err := st2.join(tk2.id, peerAt("r2", 9998), nil)
			require.NoError(t, err)
			m = tk2.members["r2"]
		}
		// Ask for one piece at a time, pretending r2 got the earlier ones.
		c := st2.policy.choose(tk2, m, 1, slots{peer: 100, cdn: 16})
		require.Len(t, c, 1)
		require.Equal(t, i, c[0].piece)
		first[c[0].from.peer.id] = true
		st.addHeld(m, i)
	}
	require.Greater(t, len(first), 1, "every piece went to the same holder")
}

// TestAssignUnknownSize checks the byte ranges of assignments: full pieces
// while the size is unknown, the short last piece once it is known.
func TestAssignUnknownSize(t *testing.T) {
	t.Parallel()
	st := newTestState(t, Config{})
	id := testTaskID(t.Name())
	require.NoError(t, st.addTask(TaskSpec{ID: id, PieceSize: 100, Size: -1}))
	require.Equal(t, -1, st.tasks[id].count)
	for i := range 3 {
		require.NoError(t, st.publish(id, i, pieceDigest(id, i)))
	}
	_, err := st.join(id, peerAt("r", 1), nil)
	require.NoError(t, err)
	tk := st.tasks[id]
	got := st.assign(tk, tk.members["r"], 2)
	require.Equal(t, []schedapi.Assignment{
		{Piece: 0, Offset: 0, Length: 100, Digest: pieceDigest(id, 0).String(), From: cdnPeer, FromCDN: true},
		{Piece: 1, Offset: 100, Length: 100, Digest: pieceDigest(id, 1).String(), From: cdnPeer, FromCDN: true},
	}, got)

	require.NoError(t, st.setSize(id, 250))
	require.Equal(t, 3, tk.count)
	got = st.assign(tk, tk.members["r"], 2)
	require.Equal(t, []schedapi.Assignment{
		{Piece: 2, Offset: 200, Length: 50, Digest: pieceDigest(id, 2).String(), From: cdnPeer, FromCDN: true},
	}, got)
	require.ErrorIs(t, st.publish(id, 3, pieceDigest(id, 3)), ErrInvalid)
	require.ErrorIs(t, st.setSize(id, 300), ErrInvalid)
	require.NoError(t, st.setSize(id, 250))
}

func TestCandidatesOrder(t *testing.T) {
	t.Parallel()
	fix := fixture{pieces: 6, holders: map[string][]int{"a": {0, 1, 2}, "b": {0, 1}, "c": {4}},
		inflight: []flight{{to: "x", piece: 5, from: ""}, {to: "y", piece: 5, from: ""}, {to: "x", piece: 3, from: ""}}}
	st, tk := fix.build(t, Config{})
	_, err := st.join(tk.id, peerAt("r", 1), nil)
	require.NoError(t, err)
	// rarity: 0 -> 2, 1 -> 2, 2 -> 1, 3 -> 1, 4 -> 1, 5 -> 2.
	require.Equal(t, []int{2, 3, 4, 0, 1, 5}, candidates(tk, tk.members["r"]))
}
