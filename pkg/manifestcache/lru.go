package manifestcache

import "container/list"

// lru is a least-recently-used map bounded by the summed cost of its values.
// It is not safe for concurrent use; the Cache guards it with its mutex.
type lru[K comparable, V any] struct {
	limit   int64
	used    int64
	cost    func(V) int64
	onEvict func(K, V)
	order   *list.List // front: most recently used
	items   map[K]*list.Element
}

type lruItem[K comparable, V any] struct {
	key  K
	val  V
	cost int64
}

func newLRU[K comparable, V any](limit int64, cost func(V) int64, onEvict func(K, V)) *lru[K, V] {
	return &lru[K, V]{
		limit:   limit,
		cost:    cost,
		onEvict: onEvict,
		order:   list.New(),
		items:   make(map[K]*list.Element),
	}
}

// get returns the value of k and marks it most recently used.
func (l *lru[K, V]) get(k K) (V, bool) {
	e, ok := l.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	l.order.MoveToFront(e)
	return e.Value.(*lruItem[K, V]).val, true
}

// add stores v under k, replacing any value there, and evicts the least
// recently used values until the total cost fits the limit. A value whose
// own cost exceeds the limit is not stored; add reports whether v was.
func (l *lru[K, V]) add(k K, v V) bool {
	c := l.cost(v)
	l.remove(k)
	if c > l.limit {
		return false
	}
	l.items[k] = l.order.PushFront(&lruItem[K, V]{key: k, val: v, cost: c})
	l.used += c
	for l.used > l.limit {
		last := l.order.Back()
		it := last.Value.(*lruItem[K, V])
		l.drop(last)
		if l.onEvict != nil {
			l.onEvict(it.key, it.val)
		}
	}
	return true
}

// remove deletes k, if present, without counting an eviction.
func (l *lru[K, V]) remove(k K) {
	if e, ok := l.items[k]; ok {
		l.drop(e)
	}
}

func (l *lru[K, V]) drop(e *list.Element) {
	it := e.Value.(*lruItem[K, V])
	l.order.Remove(e)
	delete(l.items, it.key)
	l.used -= it.cost
}

func (l *lru[K, V]) len() int { return len(l.items) }
