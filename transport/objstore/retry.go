package objstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// RetryPolicy says how often and how patiently WithRetry retries.
type RetryPolicy struct {
	Attempts      int           // total attempts per read call, at least 1
	WriteAttempts int           // total attempts per Create; 0 means Attempts
	Base          time.Duration // wait before the second attempt, doubling after each failure
	Max           time.Duration // cap on one wait
}

// DefaultRetry gives up a read after 5 attempts, about 1.5 s of waiting
// (the reader has other shards and targets to turn to, and an unreachable
// target is reported within seconds), and a write after 12, about 8 to
// 16 s: a backup cannot count a pack as written without every shard, so it
// rides out a restarting server, a throttling burst or a short network
// cut. A request that moves no byte for the stall timeout (S3Config) counts
// as one failed attempt.
var DefaultRetry = RetryPolicy{Attempts: 5, WriteAttempts: 12, Base: 100 * time.Millisecond, Max: 2 * time.Second}

// WithRetry returns s with every call retried on transient errors
// (IsTransient) with exponential backoff and jitter, waiting no longer than
// ctx allows.
//
// Create: when an attempt fails ambiguously (a timeout, a reset connection:
// the PUT may have been applied) and a later attempt reports ErrExists, the
// earlier attempt probably wrote the object. Create then Stats it and returns
// success if the size matches, and the CRC32C too when the store keeps one;
// otherwise it returns the ErrExists error. For Ferry's objects, named by
// their content or by a unique ID, an equal-sized object under the same name
// is the same object. An ErrExists on the first attempt is returned as is.
//
// List is retried only until fn is first called, so fn never sees an object
// twice; a failure after that is returned.
func WithRetry(s Store, p RetryPolicy) Store {
	if p.Attempts < 1 {
		p.Attempts = 1
	}
	if p.WriteAttempts < 1 {
		p.WriteAttempts = p.Attempts
	}
	return &retryStore{Store: s, p: p}
}

type retryStore struct {
	Store
	p RetryPolicy
}

// attemptsKey carries WithAttempts' limit.
type attemptsKey struct{}

// WithAttempts returns a context under which reads through WithRetry's
// stores make at most n attempts each (writes keep their policy): for a
// caller that has somewhere else to turn and would rather not wait.
func WithAttempts(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, attemptsKey{}, max(n, 1))
}

// do runs op until it succeeds, fails permanently, runs out of attempts or
// ctx is done. op learns which attempt it is (0-based).
func (r *retryStore) do(ctx context.Context, op func(attempt int) error) error {
	n := r.p.Attempts
	if v, ok := ctx.Value(attemptsKey{}).(int); ok {
		n = min(n, v)
	}
	return r.attempts(ctx, n, op)
}

func (r *retryStore) attempts(ctx context.Context, n int, op func(attempt int) error) error {
	var err error
	for attempt := 0; ; attempt++ {
		err = op(attempt)
		if err == nil || !IsTransient(err) {
			return err
		}
		if attempt+1 >= n {
			if n == 1 {
				return fmt.Errorf("%w (one attempt)", err)
			}
			return fmt.Errorf("%w (gave up after %d attempts)", err, n)
		}
		t := time.NewTimer(r.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retry stopped: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// backoff returns the wait after failed attempt n (0-based): Base*2^n capped
// at Max, jittered down by up to half so that clients that failed together
// do not retry together.
func (r *retryStore) backoff(n int) time.Duration {
	d := r.p.Max
	if n < 30 && r.p.Base<<n < r.p.Max {
		d = r.p.Base << n
	}
	if d <= 0 {
		return 0
	}
	return d/2 + rand.N(d/2+1)
}

func (r *retryStore) Create(ctx context.Context, name string, data []byte) error {
	return r.attempts(ctx, r.p.WriteAttempts, func(attempt int) error {
		err := r.Store.Create(ctx, name, data)
		if attempt == 0 || !errors.Is(err, ErrExists) {
			return err
		}
		info, serr := r.Store.Stat(ctx, name)
		if serr != nil || info.Size != int64(len(data)) || (info.HasCRC32C && info.CRC32C != crc32c(data)) {
			return err
		}
		return nil // our earlier attempt wrote it
	})
}

func (r *retryStore) Get(ctx context.Context, name string) (data []byte, err error) {
	err = r.do(ctx, func(int) error {
		data, err = r.Store.Get(ctx, name)
		return err
	})
	return data, err
}

func (r *retryStore) GetRange(ctx context.Context, name string, off, length int64) (data []byte, err error) {
	err = r.do(ctx, func(int) error {
		data, err = r.Store.GetRange(ctx, name, off, length)
		return err
	})
	return data, err
}

func (r *retryStore) Stat(ctx context.Context, name string) (info Info, err error) {
	err = r.do(ctx, func(int) error {
		info, err = r.Store.Stat(ctx, name)
		return err
	})
	return info, err
}

func (r *retryStore) List(ctx context.Context, prefix string, fn func(Info) error) error {
	called := false
	err := r.do(ctx, func(int) error {
		err := r.Store.List(ctx, prefix, func(info Info) error {
			called = true
			return fn(info)
		})
		if called && err != nil {
			return noRetry{err}
		}
		return err
	})
	var nr noRetry
	if errors.As(err, &nr) {
		return nr.err // fn's own error stays unchanged, as Store.List promises
	}
	return err
}

// noRetry carries an error out of do without a retry.
type noRetry struct{ err error }

func (n noRetry) Error() string { return n.err.Error() }

func (r *retryStore) Delete(ctx context.Context, name string) error {
	return r.do(ctx, func(int) error { return r.Store.Delete(ctx, name) })
}
