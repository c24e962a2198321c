package cdn

// Usage is what the CDN holds and fetches now, for the dashboard.
type Usage struct {
	// Used is the bytes of committed content; Fetching the bytes the
	// running fetches have read so far (they count towards the quota).
	Used, Fetching int64
	// Quota is cdn.quota in bytes (0: none).
	Quota int64
	// Fetches is how many source fetches are running.
	Fetches int
}

// Usage returns the CDN's disk use, its quota and its fetches in flight.
func (c *CDN) Usage() Usage {
	u := Usage{Used: c.usage.Load(), Quota: int64(c.cfg.Quota), Fetching: c.fetching()}
	c.mu.Lock()
	u.Fetches = len(c.fetches)
	c.mu.Unlock()
	return u
}
