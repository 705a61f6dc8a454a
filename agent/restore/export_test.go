package restore

// DirectBytes is how many bytes of a restore went out with direct I/O.
func DirectBytes(s *Summary) int64 { return s.direct }

// SetStripeWindow sets how many bytes of each shard a restore reads at a
// time when it reads a pack as stripes, until the returned func puts it
// back.
func SetStripeWindow(n int64) (restore func()) {
	old := stripeWindow
	stripeWindow = n
	return func() { stripeWindow = old }
}
