package chunk

import (
	"strings"
	"testing"
)

func TestParseAverage(t *testing.T) {
	for _, c := range []struct {
		in   string
		bits int
		err  string
	}{
		{"128K", 17, ""}, {"128k", 17, ""}, {"1M", 20, ""}, {"8M", 23, ""}, {"4096", 12, ""},
		{"100K", 0, "power of two"}, {"2K", 0, "power of two"}, {"16M", 0, "power of two"},
		{"", 0, "not a size"}, {"K", 0, "not a size"}, {"-1M", 0, "not a size"}, {"1G", 0, "not a size"},
	} {
		bits, err := ParseAverage(c.in)
		if c.err == "" && (err != nil || bits != c.bits) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("ParseAverage(%q) = %d, %v; want %d, %q", c.in, bits, err, c.bits, c.err)
		}
	}
	p, err := ParamsForAverage(DefaultParams(0x3DA3358B4DC173).Pol, 17)
	if err != nil || p.MinSize != 64<<10 || p.MaxSize != 1<<20 || p.AverageBits != 17 || p.Validate() != nil {
		t.Fatalf("ParamsForAverage(17) = %+v, %v", p, err)
	}
	if _, err := ParamsForAverage(p.Pol, 24); err == nil {
		t.Fatal("an average of 16 MiB was taken")
	}
}
