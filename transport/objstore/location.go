package objstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// Location is a parsed target URL:
//
//	s3://HOST[:PORT]/BUCKET[/PREFIX][?QUERY]        S3 over TLS (port 443 by default)
//	s3+http://HOST[:PORT]/BUCKET[/PREFIX][?QUERY]   S3 over plain HTTP (port 80 by default),
//	                                                for loopback and trusted networks
//	file:///ABSOLUTE/PATH                           a local directory
//
// QUERY keys (S3 only, each at most once): profile=NAME takes credentials
// from that profile of the AWS shared credentials file; region=R sets the
// region; ca=/path/ca.pem (s3:// only) trusts a private CA. Credentials never
// appear in a target URL.
type Location struct {
	Scheme  string // "s3", "s3+http" or "file"
	Host    string // S3: "host:port"
	Bucket  string // S3
	Prefix  string // S3: key prefix without leading or trailing '/', may be empty
	Path    string // file: absolute, cleaned directory
	Profile string // S3: shared credentials profile, empty for the default chain
	Region  string // S3: empty to ask the server
	CA      string // s3: PEM file of a CA to trust, may be empty
}

// String returns the URL form, which ParseURL reads back to the same
// Location. It never contains secrets.
func (l Location) String() string {
	if l.Scheme == "file" {
		return (&url.URL{Scheme: "file", Path: l.Path}).String()
	}
	p := "/" + l.Bucket
	if l.Prefix != "" {
		p += "/" + l.Prefix
	}
	q := url.Values{}
	for k, v := range map[string]string{"profile": l.Profile, "region": l.Region, "ca": l.CA} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return (&url.URL{Scheme: l.Scheme, Host: l.Host, Path: p, RawQuery: q.Encode()}).String()
}

// ParseURL parses one target URL (see Location). Errors are one line, name
// the problem and never repeat credentials.
func ParseURL(raw string) (Location, error) {
	fail := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("target URL: "+format, args...)
	}
	if raw == "" {
		return fail("empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // the url.Error would quote raw, secrets and all
		}
		return fail("%v", err)
	}
	if u.User != nil {
		return fail("credentials in the URL are not allowed; use ?profile=NAME or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return fail("unexpected fragment (#...)")
	}
	switch u.Scheme {
	case "file", "s3", "s3+http":
	case "":
		return fail("no scheme: want s3://, s3+http:// or file://")
	default:
		return fail("unknown scheme %q: want s3, s3+http or file", u.Scheme)
	}
	if u.Opaque != "" {
		return fail("%s: must be %s://...", u.Scheme, u.Scheme)
	}
	query, err := parseQuery(u.RawQuery)
	if err != nil {
		return fail("%v", err)
	}
	if u.Scheme == "file" {
		return parseFileURL(u, query)
	}
	return parseS3URL(u, query)
}

// parseQuery accepts the known keys, each once and non-empty.
func parseQuery(raw string) (map[string]string, error) {
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("query: %v", err)
	}
	q := make(map[string]string, len(vals))
	for k, vs := range vals {
		switch k {
		case "profile", "region", "ca":
		default:
			return nil, fmt.Errorf("unknown query key %q: want profile, region or ca", k)
		}
		if len(vs) != 1 {
			return nil, fmt.Errorf("query key %q given %d times", k, len(vs))
		}
		v := vs[0]
		if v == "" {
			return nil, fmt.Errorf("query key %q has no value", k)
		}
		if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return nil, fmt.Errorf("query key %q: value contains spaces or control characters", k)
		}
		q[k] = v
	}
	return q, nil
}

func parseFileURL(u *url.URL, query map[string]string) (Location, error) {
	if u.Host != "" {
		return Location{}, fmt.Errorf("target URL: file URL with host %q: want file:///absolute/path (three slashes)", u.Host)
	}
	if len(query) > 0 {
		return Location{}, errors.New("target URL: file URLs take no query (profile, region, ca are for S3)")
	}
	p := u.Path
	if !path.IsAbs(p) {
		return Location{}, errors.New("target URL: file path must be absolute: file:///absolute/path")
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == ".." {
			return Location{}, errors.New(`target URL: file path must not contain ".."`)
		}
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return Location{}, errors.New("target URL: file path contains control characters")
	}
	return Location{Scheme: "file", Path: filepath.Clean(p)}, nil
}

func parseS3URL(u *url.URL, query map[string]string) (Location, error) {
	fail := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("target URL: "+format, args...)
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if host == "" {
		return fail("%s URL has no host: want %s://host:port/bucket[/prefix]", u.Scheme, u.Scheme)
	}
	if err := checkHost(host, strings.HasPrefix(u.Host, "[")); err != nil {
		return fail("%v", err)
	}
	if port == "" {
		if strings.HasSuffix(u.Host, ":") {
			return fail("empty port")
		}
		port = "443"
		if u.Scheme == "s3+http" {
			port = "80"
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fail("invalid port %q", port)
	}
	if strings.Contains(strings.ToLower(u.EscapedPath()), "%2f") {
		return fail("encoded '/' (%%2F) in the path")
	}
	bucket, prefix, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if bucket == "" {
		return fail("no bucket: want %s://host:port/bucket[/prefix]", u.Scheme)
	}
	if err := s3utils.CheckValidBucketNameStrict(bucket); err != nil {
		return fail("invalid bucket name %q: %v", bucket, err)
	}
	prefix = strings.TrimSuffix(prefix, "/")
	if prefix != "" {
		if err := checkName(prefix); err != nil {
			return fail("prefix %q: %v", prefix, strings.TrimPrefix(err.Error(), "invalid object name: "))
		}
	}
	loc := Location{
		Scheme:  u.Scheme,
		Host:    net.JoinHostPort(host, port),
		Bucket:  bucket,
		Prefix:  prefix,
		Profile: query["profile"],
		Region:  query["region"],
		CA:      query["ca"],
	}
	if loc.CA != "" {
		if u.Scheme != "s3" {
			return fail("ca= needs TLS: use s3://, not s3+http://")
		}
		if !path.IsAbs(loc.CA) {
			return fail("ca= must be an absolute path")
		}
		loc.CA = filepath.Clean(loc.CA)
	}
	return loc, nil
}

// checkHost accepts an IP address (IPv6 only in brackets) or a DNS name.
func checkHost(host string, bracketed bool) error {
	if bracketed || strings.Contains(host, ":") {
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil || !bracketed {
			return fmt.Errorf("invalid host %q: an IPv6 address goes in brackets, [::1]:9000", host)
		}
		return nil
	}
	if len(host) > 253 || strings.HasPrefix(host, "-") || strings.HasPrefix(host, ".") ||
		strings.ContainsFunc(host, func(r rune) bool {
			return (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '.' && r != '-' && r != '_'
		}) {
		return fmt.Errorf("invalid host %q", host)
	}
	return nil
}

// MaxTargets bounds the targets of a repository. Shard i of a pack goes to
// target i mod T and a pack has at most 256 shards, so further targets
// could only hold copies of the metadata.
const MaxTargets = 256

// ParseRepo parses a comma-separated list of target URLs, one per target of
// a repository, in order. Spaces around entries are ignored. Empty entries,
// duplicate targets, targets nested in one another (the same bucket with
// one prefix inside the other, or one directory inside another) and more
// than MaxTargets targets are errors.
func ParseRepo(s string) ([]Location, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("repository: no target URLs")
	}
	raws := strings.Split(s, ",")
	if len(raws) > MaxTargets {
		return nil, fmt.Errorf("repository: %d targets, at most %d", len(raws), MaxTargets)
	}
	locs := make([]Location, 0, len(raws))
	ids := make([]string, 0, len(raws))
	for i, raw := range raws {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			return nil, fmt.Errorf("repository: target %d is empty", i+1)
		}
		loc, err := ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("repository: target %d: %w", i+1, err)
		}
		b := loc.identity()
		for j, a := range ids {
			switch {
			case a == b:
				return nil, fmt.Errorf("repository: target %d (%s) repeats target %d", i+1, loc, j+1)
			case strings.HasPrefix(b, a+"/") || strings.HasPrefix(a, b+"/"):
				return nil, fmt.Errorf("repository: targets %d (%s) and %d (%s) overlap: one is inside the other", j+1, locs[j], i+1, loc)
			}
		}
		locs = append(locs, loc)
		ids = append(ids, b)
	}
	return locs, nil
}

// identity names the place a Location stores objects, ignoring how it is
// reached, so that one place can be recognised under two URLs.
func (l Location) identity() string {
	if l.Scheme == "file" {
		return "file:" + strings.TrimSuffix(l.Path, "/")
	}
	id := "s3:" + l.Host + "/" + l.Bucket
	if l.Prefix != "" {
		id += "/" + l.Prefix
	}
	return id
}

// Open returns the Store for loc, wrapped WithRetry(DefaultRetry).
//
// S3 credentials come from the first of: the ?profile= profile of the AWS
// shared credentials file ($AWS_SHARED_CREDENTIALS_FILE or
// ~/.aws/credentials); AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// optionally AWS_SESSION_TOKEN; the "default" profile of that file.
// Open does not contact the server.
func Open(ctx context.Context, loc Location) (Store, error) {
	return OpenEnv(ctx, loc, os.Getenv)
}

// Env looks up the settings Open reads from the environment
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
// AWS_SHARED_CREDENTIALS_FILE, and FERRY_S3_STALL_TIMEOUT, a duration
// overriding DefaultStallTimeout). The agent passes one built from a
// repository's Secret, so jobs of different repositories never share
// process-wide credentials.
type Env func(key string) string

// stallTimeout reads FERRY_S3_STALL_TIMEOUT; 0 (the default) when unset or
// not a positive duration.
func stallTimeout(env Env) time.Duration {
	d, err := time.ParseDuration(env("FERRY_S3_STALL_TIMEOUT"))
	if err != nil || d <= 0 {
		return 0
	}
	return d
}

// OpenEnv is Open with credentials settings looked up in env.
func OpenEnv(ctx context.Context, loc Location, env Env) (Store, error) {
	var (
		s   Store
		err error
	)
	switch loc.Scheme {
	case "file":
		s, err = NewFile(loc.Path)
	case "s3", "s3+http":
		var creds *credentials.Credentials
		if creds, err = loc.credentials(ctx, env); err != nil {
			return nil, fmt.Errorf("open %s: %w", loc, err)
		}
		s, err = NewS3(ctx, S3Config{
			Endpoint:     loc.Host,
			Secure:       loc.Scheme == "s3",
			Bucket:       loc.Bucket,
			Prefix:       loc.Prefix,
			Region:       loc.Region,
			Creds:        creds,
			CACertFile:   loc.CA,
			StallTimeout: stallTimeout(env),
		})
	default:
		return nil, fmt.Errorf("open %s: unknown scheme %q", loc, loc.Scheme)
	}
	if err != nil {
		return nil, err
	}
	return WithRetry(s, DefaultRetry), nil
}

func (l Location) credentials(ctx context.Context, env Env) (*credentials.Credentials, error) {
	file := env("AWS_SHARED_CREDENTIALS_FILE")
	if file == "" {
		home, err := os.UserHomeDir()
		if err != nil && l.Profile != "" {
			return nil, fmt.Errorf("credentials: no home directory for ~/.aws/credentials: %w", err)
		}
		file = filepath.Join(home, ".aws", "credentials")
	}
	var (
		creds  *credentials.Credentials
		source string
	)
	id, secret := env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")
	switch {
	case l.Profile != "":
		creds, source = credentials.NewFileAWSCredentials(file, l.Profile), fmt.Sprintf("profile %q in %s", l.Profile, file)
	case id != "" || secret != "":
		if id == "" || secret == "" {
			return nil, errors.New("credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
		}
		creds, source = credentials.NewStaticV4(id, secret, env("AWS_SESSION_TOKEN")), "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
	default:
		creds, source = credentials.NewFileAWSCredentials(file, "default"), fmt.Sprintf("profile \"default\" in %s (no ?profile= and no AWS_ACCESS_KEY_ID)", file)
	}
	v, err := creds.GetWithContext(&credentials.CredContext{Context: ctx})
	if err != nil {
		return nil, fmt.Errorf("credentials from %s: %w", source, err)
	}
	if v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("credentials from %s: no access key", source)
	}
	return creds, nil
}
