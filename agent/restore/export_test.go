package restore

// DirectBytes is how many bytes of a restore went out with direct I/O.
func DirectBytes(s *Summary) int64 { return s.direct }

// SetListPage sets how many names a listing request is taken to return,
// until the returned func puts it back: 1 makes a restore list even a
// small repository's shards directory by directory.
func SetListPage(n int) (restore func()) {
	old := listPage
	listPage = n
	return func() { listPage = old }
}

// ListByDirectory is listByDirectory.
var ListByDirectory = listByDirectory
