// Package objstore is Ferry's one small object-store interface and its
// implementations: in-memory, a local directory (file://) and S3 (minio-go).
//
// Objects are immutable: written once by Create, read whole or by range,
// listed, and deleted by prune. Nothing is ever overwritten, so a repository
// on any Store keeps the guarantee "an object that exists has its final
// content".
//
// Object names are relative, '/'-separated paths such as "data/ab/abcdef":
// non-empty, at most 1024 bytes, valid UTF-8 without control characters, no
// empty, "." or ".." segment, and no segment starting with ".tmp-" (reserved
// for the file store's temporary files). Every Store enforces the same rule so
// a repository can move between store kinds.
//
// On-target layout: the object named N lives at
//   - file://ROOT: the file ROOT/N (one directory per '/'-separated segment),
//     files 0600, directories 0700. The CRC32C of the content is kept in the
//     extended attribute "user.ferry.crc32c" (4 bytes, big-endian) when the
//     filesystem supports user xattrs; otherwise Info.HasCRC32C is false.
//   - s3://HOST/BUCKET/PREFIX: the key PREFIX/N (or N with no prefix), written
//     by one PUT with a full-object CRC32C checksum the server verifies and
//     keeps.
//
// Errors wrap the sentinels below (use errors.Is) and name the operation, the
// object and the store's Location. IsTransient tells which errors are worth
// retrying; WithRetry does the retrying.
package objstore

import (
	"context"
	"errors"
)

// Sentinel errors. Every Store translates its backend's errors into these at
// the boundary, so callers never look at SDK error types.
var (
	// ErrNotFound: the object does not exist.
	ErrNotFound = errors.New("object not found")
	// ErrExists: Create found an object of that name already there; the
	// existing object is unchanged.
	ErrExists = errors.New("object already exists")
	// ErrNoBucket: S3 NoSuchBucket, or the file:// root directory is missing.
	ErrNoBucket = errors.New("bucket (or file:// directory) does not exist")
	// ErrPermission: bad credentials or access denied (HTTP 403, EACCES).
	ErrPermission = errors.New("access denied")
)

// Info describes one stored object.
type Info struct {
	Name      string // object name relative to the store's prefix, '/'-separated
	Size      int64
	CRC32C    uint32 // checksum (Castagnoli) of the whole object as the store keeps it
	HasCRC32C bool   // false when the store does not keep one (or List cannot return it)
}

// Store holds immutable objects. Objects are written once and never
// overwritten. Implementations are safe for concurrent use.
//
// A Store makes one attempt per call; wrap it with WithRetry to retry
// transient failures. Every method honours ctx.
type Store interface {
	// Create stores data under name. If name exists it returns an error
	// wrapping ErrExists and leaves the existing object unchanged; where the
	// backend can, the check and the write are one atomic step (S3
	// If-None-Match: *, link(2) on a file system), so of concurrent Creates
	// of one name exactly one succeeds.
	Create(ctx context.Context, name string, data []byte) error

	// Get returns the whole object, or an error wrapping ErrNotFound. An
	// object larger than MaxObjectSize is an error (not transient).
	Get(ctx context.Context, name string) ([]byte, error)

	// GetRange returns exactly length bytes starting at off. A range that
	// does not lie within the object is an error (not transient); length 0
	// returns an empty slice if the object exists and off <= its size.
	GetRange(ctx context.Context, name string, off, length int64) ([]byte, error)

	// Stat returns the object's Info, or an error wrapping ErrNotFound.
	Stat(ctx context.Context, name string) (Info, error)

	// List calls fn for every object whose name starts with prefix (a plain
	// string prefix, not a directory), in unspecified order, and stops at the
	// first error fn returns, returning it unchanged. Info.HasCRC32C may be
	// false in listings even when Stat would return a checksum.
	List(ctx context.Context, prefix string, fn func(Info) error) error

	// Delete removes the object; deleting an absent object returns nil.
	Delete(ctx context.Context, name string) error

	// Location is a human-readable name of the store, such as
	// "s3://host:443/bucket/prefix". It never contains secrets.
	Location() string
}
