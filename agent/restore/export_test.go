package restore

// DirectBytes is how many bytes of a restore went out with direct I/O.
func DirectBytes(s *Summary) int64 { return s.direct }
