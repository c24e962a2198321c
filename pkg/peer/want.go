package peer

// want records that the bytes [off, off+n) (n < 0: to the end) are needed
// now; it returns the function that drops the record.
func (t *task) want(off, n int64) func() {
	return func() {}
}
