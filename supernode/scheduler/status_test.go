package scheduler

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

func TestTaskDetail(t *testing.T) {
	t.Parallel()
	s := startScheduler(t, Config{})
	ctx := t.Context()
	id := addTask(t, s, t.Name(), 10, 9)
	join(t, s, id, "a", 0, 1, 2, 8)
	join(t, s, id, "b")

	// b gets three pieces; it reports two of them, the third stays in
	// flight.
	resp, err := s.Poll(ctx, id, "b", 3)
	require.NoError(t, err)
	require.Len(t, resp.Assignments, 3)
	var results []schedapi.PieceResult
	for _, as := range resp.Assignments[:2] {
		results = append(results, schedapi.PieceResult{Piece: as.Piece, From: as.From.ID, OK: true, Bytes: as.Length})
	}
	require.NoError(t, s.Report(ctx, id, "b", results))

	d, err := s.TaskDetail(ctx, id)
	require.NoError(t, err)
	require.Equal(t, cdnPeer.ID, d.CDNID)
	require.Equal(t, []byte{0xff, 0x01}, d.CDNHeld, "pieces 0-8 published")
	require.Len(t, d.Members, 2)
	require.Equal(t, "a", d.Members[0].ID)
	require.Equal(t, []byte{0x07, 0x01}, d.Members[0].Held, "pieces 0, 1, 2 and 8")
	held := 0
	for i := range 10 {
		if d.Members[1].Held[i/8]&(1<<(i%8)) != 0 {
			held++
		}
	}
	require.Equal(t, 2, held)

	last := resp.Assignments[2]
	require.Equal(t, []Transfer{{Piece: last.Piece, From: last.From.ID, To: "b", Started: true}}, d.InFlight)

	delivered := 0
	for _, e := range d.Delivered {
		require.Equal(t, "b", e.To)
		delivered += e.Pieces
	}
	require.Equal(t, 2, delivered)

	slots, err := s.CDNSlots(ctx)
	require.NoError(t, err)
	require.Equal(t, DefaultCDNUploadSlots, slots.Total)
	require.Equal(t, 1, slots.Assignments)

	_, err = s.TaskDetail(ctx, testTaskID("none"))
	require.ErrorIs(t, err, ErrTaskNotFound)
}

func TestCountDeliveryBounded(t *testing.T) {
	t.Parallel()
	tk := &task{}
	for i := range maxEdges + 10 {
		tk.countDelivery("cdn", string(rune('a'+i%26))+string(rune(i)))
	}
	require.Len(t, tk.delivered, maxEdges)
	tk.countDelivery("cdn", "a"+string(rune(0)))
	require.Equal(t, 2, tk.delivered[edge{"cdn", "a" + string(rune(0))}])
}
