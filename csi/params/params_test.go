package params

import (
	"errors"
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/transport/repo/retention"
)

func TestParse(t *testing.T) {
	good := map[string]string{
		KeyRepository:        "s3+http://127.0.0.1:9000/zone-a,s3+http://127.0.0.1:9001/zone-b",
		KeySecretName:        "ferry-repo",
		KeySnapshotName:      "snap-1",
		KeySnapshotNamespace: "db",
		"driver-param":       "kept",
	}
	r, fwd, err := Parse(good, "ferry-system")
	if err != nil {
		t.Fatal(err)
	}
	// The Secret is in the agents' namespace, not the VolumeSnapshot's.
	want := &Replication{Repository: good[KeyRepository], SecretName: "ferry-repo", SecretNamespace: "ferry-system", SnapshotName: "snap-1", SnapshotNamespace: "db"}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("got %+v\nwant %+v", r, want)
	}
	named := maps.Clone(good)
	named[KeySecretNamespace] = "dr"
	if r, _, err := Parse(named, "ferry-system"); err != nil || r.SecretNamespace != "dr" {
		t.Fatalf("%s=dr: %+v %v", KeySecretNamespace, r, err)
	}
	// Without a default (no --kube), the class must name the namespace.
	var pe *Error
	if _, _, err := Parse(good, ""); !errors.As(err, &pe) || pe.Key != KeySecretNamespace {
		t.Fatalf("no %s and no default: %v", KeySecretNamespace, err)
	}
	if !reflect.DeepEqual(fwd, map[string]string{"driver-param": "kept", KeySnapshotName: "snap-1", KeySnapshotNamespace: "db"}) {
		t.Fatalf("forwarded %v", fwd)
	}
	if r, fwd, err := Parse(map[string]string{"x": "y"}, ""); r != nil || err != nil || fwd["x"] != "y" {
		t.Fatalf("no ferry parameters: %v %v %v", r, fwd, err)
	}
	off := map[string]string{KeyReplicate: "false", KeyRepository: "file:///x"}
	if r, fwd, err := Parse(off, ""); r != nil || err != nil || len(fwd) != 0 {
		t.Fatalf("replicate=false: %v %v %v", r, fwd, err)
	}
	kept := map[string]string{KeyKeepLast: "3", KeyKeepDaily: "7", KeyKeepWeekly: "0", KeyKeepHourly: "24", KeyKeepMonthly: "12"}
	for k, v := range good {
		kept[k] = v
	}
	if r, _, err := Parse(kept, "ferry-system"); err != nil || r.Keep == nil || *r.Keep != (retention.Policy{Last: 3, Hourly: 24, Daily: 7, Monthly: 12}) {
		t.Fatalf("keep rules: %+v %v", r, err)
	}
	if r, _, err := Parse(map[string]string{KeyRepository: "file:///x", KeySecretName: "s", KeySecretNamespace: "n", KeyKeepLast: "0"}, ""); err != nil || r.Keep != nil {
		t.Fatalf("keep rules all 0 keep everything: %+v %v", r, err)
	}
	if r.SeriesName("db", "data", "vol-1") != "db/data" || (&Replication{Name: "x"}).SeriesName("a", "b", "c") != "x" || r.SeriesName("", "", "vol-1") != "vol-1" {
		t.Fatal("series names")
	}
}

func TestParseErrors(t *testing.T) {
	base := func(extra map[string]string) map[string]string {
		m := map[string]string{KeyRepository: "file:///repo", KeySecretName: "s", KeySecretNamespace: "ns"}
		for k, v := range extra {
			if v == "" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	for _, c := range []struct {
		in  map[string]string
		key string
	}{
		{base(map[string]string{Prefix + "repo": "x"}), Prefix + "repo"},
		{base(map[string]string{KeyRepository: "ftp://x/y"}), KeyRepository},
		{base(map[string]string{KeyRepository: ""}), KeyRepository},
		{base(map[string]string{KeySecretName: ""}), KeySecretName},
		{base(map[string]string{KeySecretName: "Bad_Name"}), KeySecretName},
		{base(map[string]string{KeySecretNamespace: "-x"}), KeySecretNamespace},
		{base(map[string]string{KeySecretNamespace: ""}), KeySecretNamespace},
		{base(map[string]string{KeyReplicate: "yes"}), KeyReplicate},
		{base(map[string]string{KeyName: "a\nb"}), KeyName},
		{base(map[string]string{KeyKeepLast: "-1"}), KeyKeepLast},
		{base(map[string]string{KeyKeepDaily: "+7"}), KeyKeepDaily},
		{base(map[string]string{KeyKeepWeekly: "10001"}), KeyKeepWeekly},
		{base(map[string]string{KeyKeepMonthly: "3 "}), KeyKeepMonthly},
		{base(map[string]string{KeyKeepHourly: "1.5"}), KeyKeepHourly},
		{base(map[string]string{KeyKeepLast: "1e3"}), KeyKeepLast},
		{base(map[string]string{Prefix + "keep": "3"}), Prefix + "keep"},
	} {
		_, _, err := Parse(c.in, "")
		var pe *Error
		if !errors.As(err, &pe) || pe.Key != c.key || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%v: got %v, want an error naming %s", c.in, err, c.key)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(KeyRepository, "file:///r", KeySecretName, "s", "ns")
	f.Add(Prefix+"x", "", "other", "v", "")
	f.Add(KeyKeepDaily, "7", KeyRepository, "file:///r", "ns")
	f.Add(KeyKeepLast, "99999999999999999999", KeySecretName, "s", "ns")
	// ns is the agents' namespace, the default for the Secret's.
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, ns string) {
		in := map[string]string{k1: v1, k2: v2, KeySnapshotNamespace: "app"}
		r, fwd, err := Parse(in, ns)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || strings.ContainsRune(err.Error(), '\n') && !strings.ContainsRune(k1+v1+k2+v2, '\n') {
				t.Fatalf("error %q is not a one-line parameter error", err)
			}
			return
		}
		for k := range fwd {
			if strings.HasPrefix(k, Prefix) {
				t.Fatalf("forwarded Ferry's parameter %s", k)
			}
		}
		if r != nil && (r.Repository == "" || r.SecretName == "" || r.SecretNamespace == "") {
			t.Fatalf("incomplete replication %+v", r)
		}
		if r != nil && in[KeySecretNamespace] == "" && r.SecretNamespace != ns {
			t.Fatalf("Secret namespace %q, want the default %q", r.SecretNamespace, ns)
		}
		if r != nil && r.Keep != nil {
			k := *r.Keep
			if k.IsZero() || k.Validate() != nil || max(k.Last, k.Hourly, k.Daily, k.Weekly, k.Monthly) > maxKeep {
				t.Fatalf("bad keep rules %+v", k)
			}
		}
	})
}
