package schedclient

// Which supernode a call goes to: rendezvous (highest random weight) hashing
// of the task ID over the supernode list.

import (
	"hash/fnv"
	"slices"
	"strings"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Order returns the supernodes' base URLs in the rendezvous order of
// taskID: the first owns the task while it is up, the next takes the task
// over when it is not. Every client with the same list computes the same
// order.
func (c *Client) Order(taskID taskid.ID) []string { return rendezvous(c.supernodes, taskID.String()) }

// nodeFor returns the supernodes in the order a call about taskID tries
// them: the one the task was registered on first, then by highest random
// weight of (node, task). Every peer computes the same order, so a task has
// one owner while its supernodes are up.
func (c *Client) nodeFor(taskID string) []string {
	order := rendezvous(c.supernodes, taskID)
	c.mu.Lock()
	s, ok := c.sticky[taskID]
	c.mu.Unlock()
	if ok {
		order = slices.DeleteFunc(order, func(n string) bool { return n == s })
		order = append([]string{s}, order...)
	}
	return order
}

// rendezvous orders the supernodes by decreasing weight for key.
func rendezvous(nodes []string, key string) []string {
	type scored struct {
		node  string
		score uint64
	}
	s := make([]scored, len(nodes))
	for i, n := range nodes {
		s[i] = scored{n, weight(n, key)}
	}
	slices.SortStableFunc(s, func(a, b scored) int {
		switch {
		case a.score > b.score:
			return -1
		case a.score < b.score:
			return 1
		}
		return strings.Compare(a.node, b.node)
	})
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i].node
	}
	return out
}

// weight is a stable hash of (node, key): FNV-1a followed by a 64-bit
// finaliser so that similar inputs spread.
func weight(node, key string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(node))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(key))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// routeKey is the task ID a register request is routed by: the one the
// supernode derives (schedapi.RegisterRequest.TaskID), or the URL itself
// when none can be derived (the supernode will reject it anyway).
func routeKey(req schedapi.RegisterRequest) string {
	if id, err := req.TaskID(); err == nil {
		return id.String()
	}
	return req.URL
}
