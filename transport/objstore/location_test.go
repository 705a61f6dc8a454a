package objstore_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ferrydr/ferry/testenv/alloc"
	"github.com/ferrydr/ferry/transport/objstore"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want objstore.Location
		str  string // String(), if different from raw
	}{
		{raw: "s3://s3.example.com:9000/bucket", want: objstore.Location{Scheme: "s3", Host: "s3.example.com:9000", Bucket: "bucket"}},
		{raw: "s3://S3.Example.com/bucket/", want: objstore.Location{Scheme: "s3", Host: "s3.example.com:443", Bucket: "bucket"}, str: "s3://s3.example.com:443/bucket"},
		{raw: "s3+http://127.0.0.1:9000/bkt/a/b/c", want: objstore.Location{Scheme: "s3+http", Host: "127.0.0.1:9000", Bucket: "bkt", Prefix: "a/b/c"}},
		{raw: "s3+http://localhost/bkt/p/", want: objstore.Location{Scheme: "s3+http", Host: "localhost:80", Bucket: "bkt", Prefix: "p"}, str: "s3+http://localhost:80/bkt/p"},
		{raw: "s3://[::1]:9000/bkt", want: objstore.Location{Scheme: "s3", Host: "[::1]:9000", Bucket: "bkt"}},
		{raw: "s3://h:1/bkt/pre?profile=backup&region=eu-west-1&ca=/etc/ferry/ca.pem", want: objstore.Location{
			Scheme: "s3", Host: "h:1", Bucket: "bkt", Prefix: "pre", Profile: "backup", Region: "eu-west-1", CA: "/etc/ferry/ca.pem"},
			str: "s3://h:1/bkt/pre?ca=%2Fetc%2Fferry%2Fca.pem&profile=backup&region=eu-west-1"},
		{raw: "file:///srv/ferry/repo", want: objstore.Location{Scheme: "file", Path: "/srv/ferry/repo"}},
		{raw: "file:///srv/ferry//repo/", want: objstore.Location{Scheme: "file", Path: "/srv/ferry/repo"}, str: "file:///srv/ferry/repo"},
		{raw: "file:///with%20space", want: objstore.Location{Scheme: "file", Path: "/with space"}},
	} {
		got, err := objstore.ParseURL(tc.raw)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.raw, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tc.raw, got, tc.want)
		}
		str := tc.str
		if str == "" {
			str = tc.raw
		}
		if got.String() != str {
			t.Errorf("ParseURL(%q).String() = %q, want %q", tc.raw, got.String(), str)
		}
	}
}

func TestParseURLErrors(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"", "empty"},
		{"ftp://h/bkt", `unknown scheme "ftp"`},
		{"S4://h/bkt", `unknown scheme "s4"`},
		{"/srv/repo", "no scheme"},
		{"h:9000/bkt", "unknown scheme"},
		{"file://relative/path", "three slashes"},
		{"file:relative", "must be file://"},
		{"file:///a/../b", `".."`},
		{"file:///srv?profile=x", "take no query"},
		{"s3://h:9000", "no bucket"},
		{"s3://h:9000/", "no bucket"},
		{"s3:///bkt", "no host"},
		{"s3://h:0/bkt", "invalid port"},
		{"s3://h:99999/bkt", "invalid port"},
		{"s3://h:/bkt", "empty port"},
		{"s3://h/B_ucket", "invalid bucket name"},
		{"s3://h/ab", "invalid bucket name"},
		{"s3://h/bkt/a//b", "prefix"},
		{"s3://h/bkt/a/../b", "prefix"},
		{"s3://h/bkt/a%2Fb", "%2F"},
		{"s3://AKIAEXAMPLE:s3cr3tKey@h/bkt", "credentials in the URL"},
		{"s3://AKIAEXAMPLE@h/bkt", "credentials in the URL"},
		{"s3://h/bkt?secret=x", `unknown query key "secret"`},
		{"s3://h/bkt?profile=a&profile=b", "2 times"},
		{"s3://h/bkt?profile=", "no value"},
		{"s3://h/bkt?region=a%20b", "spaces"},
		{"s3://h/bkt?ca=relative.pem", "absolute"},
		{"s3+http://h/bkt?ca=/ca.pem", "needs TLS"},
		{"s3://h/bkt#frag", "fragment"},
		{"s3://h/bkt?%zz", "query"},
		{"s3://h /bkt", "invalid"},
	} {
		_, err := objstore.ParseURL(tc.raw)
		if err == nil {
			t.Errorf("ParseURL(%q) succeeded, want error containing %q", tc.raw, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseURL(%q) = %q, want it to contain %q", tc.raw, err, tc.want)
		}
		if strings.Contains(err.Error(), "s3cr3tKey") || strings.Contains(err.Error(), "AKIAEXAMPLE") {
			t.Errorf("ParseURL(%q) error repeats the credentials: %q", tc.raw, err)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseURL(%q) error is not one line: %q", tc.raw, err)
		}
	}
}

func TestParseRepo(t *testing.T) {
	locs, err := objstore.ParseRepo(" s3://a:1/bkt/p , s3://b:1/bkt/p,file:///srv/x ")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range locs {
		got = append(got, l.String())
	}
	if want := "s3://a:1/bkt/p s3://b:1/bkt/p file:///srv/x"; strings.Join(got, " ") != want {
		t.Fatalf("ParseRepo = %v, want %s", got, want)
	}
	for _, tc := range []struct{ in, want string }{
		{"", "no target"},
		{"  ", "no target"},
		{"s3://a/bkt,,s3://b/bkt", "target 2 is empty"},
		{"s3://a/bkt,", "target 2 is empty"},
		{"s3://a/bkt,ftp://b/bkt", "target 2: target URL: unknown scheme"},
		{"s3://a/bkt/p,s3://a:443/bkt/p/", "repeats target 1"},
		{"s3://a:9000/bkt/p,s3+http://a:9000/bkt/p", "repeats target 1"},
		{"s3://a:9000/bkt/p?profile=x,s3://a:9000/bkt/p?profile=y", "repeats target 1"},
		{"s3://a/bkt,s3://a/bkt/p", "overlap"},
		{"s3://a/bkt/p/q,s3://a/bkt/p", "overlap"},
		{"file:///srv/r,file:///srv/r/sub", "overlap"},
		{"file:///srv/r,file:///srv/r/", "repeats"},
		{strings.Repeat("file:///r,", objstore.MaxTargets) + "file:///r", "257 targets, at most 256"},
	} {
		if _, err := objstore.ParseRepo(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseRepo(%q) = %v, want error containing %q", tc.in, err, tc.want)
		}
	}
	// Same bucket, sibling prefixes, and prefixes that merely share a
	// string prefix are distinct targets.
	if _, err := objstore.ParseRepo("s3://a/bkt/p,s3://a/bkt/q,s3://a/bkt/pq,s3://b/bkt/p"); err != nil {
		t.Fatalf("distinct targets rejected: %v", err)
	}
	var most []string
	for i := range objstore.MaxTargets {
		most = append(most, fmt.Sprintf("file:///r/%d", i))
	}
	if locs, err := objstore.ParseRepo(strings.Join(most, ",")); err != nil || len(locs) != objstore.MaxTargets {
		t.Fatalf("%d targets: %v", objstore.MaxTargets, err)
	}
}

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	loc, err := objstore.ParseURL("file://" + dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := objstore.Open(t.Context(), loc)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Create(t.Context(), "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "a", "b")); err != nil {
		t.Fatal(err)
	}
	loc.Path = filepath.Join(dir, "missing")
	if _, err := objstore.Open(t.Context(), loc); !errors.Is(err, objstore.ErrNoBucket) {
		t.Fatalf("Open of a missing directory: %v, want ErrNoBucket", err)
	}
}

// FuzzParseURL: seeds in testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw string) {
		loc, err := objstore.ParseURL(raw)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		// A parsed Location prints to a URL that parses back to it.
		again, err := objstore.ParseURL(loc.String())
		if err != nil {
			t.Fatalf("ParseURL(%q) = %+v, but its String %q does not parse: %v", raw, loc, loc.String(), err)
		}
		if again != loc {
			t.Fatalf("round trip of %q: %+v != %+v", raw, again, loc)
		}
		if !utf8.ValidString(loc.Bucket + loc.Prefix) {
			t.Fatalf("invalid UTF-8 accepted: %+v", loc)
		}
	})
}

// FuzzParseRepo parses whole --repo strings, as the CLI and the
// ferry.dev/repository parameter give them. Seeds in
// testdata/fuzz/FuzzParseRepo: repositories as the README writes them and
// near misses (empty entries, repeated and nested targets, credentials, too
// many targets).
func FuzzParseRepo(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		var locs []objstore.Location
		var err error
		// Parsing costs in proportion to the string, however many
		// targets it lists (at most MaxTargets, each compared with the
		// others once).
		n := alloc.Bytes(func() { locs, err = objstore.ParseRepo(s) })
		if limit := uint64(256*len(s) + 64<<10); n > limit {
			t.Fatalf("ParseRepo of %d bytes allocated %d (limit %d)", len(s), n, limit)
		}
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		if len(locs) != strings.Count(s, ",")+1 || len(locs) > objstore.MaxTargets {
			t.Fatalf("%q: %d targets", s, len(locs))
		}
		// The targets print to a --repo that parses back to them.
		var urls []string
		for _, l := range locs {
			urls = append(urls, l.String())
		}
		again, err := objstore.ParseRepo(strings.Join(urls, ","))
		if err != nil || !slices.Equal(again, locs) {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", s, again, err, locs)
		}
	})
}
