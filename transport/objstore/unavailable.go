package objstore

import "context"

// Unavailable returns a Store that fails every call with err: it stands in
// for a target that could not even be opened (a file:// root that is gone),
// so a repository keeps its target positions and works with the others.
func Unavailable(location string, err error) Store {
	return unavailable{loc: location, err: err}
}

type unavailable struct {
	loc string
	err error
}

func (u unavailable) Create(context.Context, string, []byte) error         { return u.err }
func (u unavailable) Get(context.Context, string) ([]byte, error)          { return nil, u.err }
func (u unavailable) Stat(context.Context, string) (Info, error)           { return Info{}, u.err }
func (u unavailable) Delete(context.Context, string) error                 { return u.err }
func (u unavailable) Location() string                                     { return u.loc }
func (u unavailable) List(context.Context, string, func(Info) error) error { return u.err }
func (u unavailable) GetRange(context.Context, string, int64, int64) ([]byte, error) {
	return nil, u.err
}

// OpenAll opens every target of a repository, in order. A target that
// cannot be opened (a file:// root that is gone, bad credentials) stays in
// its position as an Unavailable store carrying the error, so a repository
// keeps working with the others and says which one failed.
func OpenAll(ctx context.Context, locs []Location, env Env) []Store {
	stores := make([]Store, len(locs))
	for i, l := range locs {
		s, err := OpenEnv(ctx, l, env)
		if err != nil {
			s = Unavailable(l.String(), err)
		}
		stores[i] = s
	}
	return stores
}
