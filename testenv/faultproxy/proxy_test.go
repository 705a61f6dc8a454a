package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echo serves an echo server on loopback.
func echo(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return l.Addr().String()
}

func roundTrip(c net.Conn, msg []byte) ([]byte, error) {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	return got, err
}

func TestFaults(t *testing.T) {
	p := Start(t, echo(t))
	msg := bytes.Repeat([]byte("ferry "), 1000)
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := roundTrip(c, msg); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("pass: %v", err)
	}

	// Reset aborts the open connection and every new one.
	p.Set(Fault{Mode: Reset})
	if _, err := roundTrip(c, msg); !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("reset, open connection: %v", err)
	}
	if c2, err := net.Dial("tcp", p.Addr); err == nil {
		if _, err := roundTrip(c2, msg); err == nil {
			t.Fatal("reset: a new connection worked")
		}
		c2.Close()
	}

	// Refuse: connecting fails with ECONNREFUSED; Pass listens again on the
	// same address.
	p.Set(Fault{Mode: Refuse})
	if _, err := net.Dial("tcp", p.Addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("refuse: %v", err)
	}
	if err := p.Set(Fault{Mode: Pass}); err != nil {
		t.Fatal(err)
	}
	c, err = net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := roundTrip(c, msg); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("pass after refuse: %v", err)
	}

	// Hang: the bytes are held, the client times out; they flow again
	// when the fault clears.
	p.Set(Fault{Mode: Hang})
	c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	c.Write(msg)
	if _, err := io.ReadFull(c, make([]byte, len(msg))); !errors.Is(err, errTimeout(err)) {
		t.Fatalf("hang: %v", err)
	}
	c.Close()

	// Slow: 40 KB at 100 KB/s takes about 0.4 s each way.
	p.Set(Fault{Mode: Slow, BytesPerSecond: 100_000})
	c, err = net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	big := bytes.Repeat([]byte("x"), 40_000)
	got, err := roundTrip(c, big)
	if took := time.Since(start); err != nil || !bytes.Equal(got, big) || took < 600*time.Millisecond {
		t.Fatalf("slow: %v after %s", err, took)
	}
}

// errTimeout returns err when it is a timeout, so errors.Is matches it.
func errTimeout(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	return errors.New("not a timeout")
}

// TestDistant: a Distant proxy delays each direction by its latency, lets
// chunks follow each other without waiting (a transfer takes about one
// latency, not one per chunk), bounds a connection by its window, and
// keeps every byte in order when the fault changes mid-transfer.
func TestDistant(t *testing.T) {
	const latency = 20 * time.Millisecond
	p := Start(t, echo(t))
	if err := p.Set(Fault{Mode: Distant, Latency: latency}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("ferry")
	start := time.Now()
	if got, err := roundTrip(c, msg); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	if rtt := time.Since(start); rtt < 2*latency {
		t.Errorf("round trip took %v, less than twice the latency %v", rtt, latency)
	}

	// 8 MiB each way: chunk by chunk, one latency each, it would take 256
	// latencies (over 5 s); pipelined, under the default window, about
	// 8 MiB / (4 MiB per 40 ms) plus a round trip.
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i * 7 / 5)
	}
	start = time.Now()
	got, err := echoBig(c, big, nil)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("8 MiB through a distant proxy: %v (equal %v)", err, bytes.Equal(got, big))
	}
	d := time.Since(start)
	t.Logf("8 MiB each way, default window: %v", d)
	if d > 2*time.Second {
		t.Errorf("8 MiB took %v: chunks waited for each other", d)
	}

	// A 256 KiB window: 8 MiB needs at least 32 windows, each held for a
	// round trip (40 ms).
	if err := p.Set(Fault{Mode: Distant, Latency: latency, Window: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if got, err = echoBig(c, big, nil); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("8 MiB, small window: %v", err)
	}
	d = time.Since(start)
	t.Logf("8 MiB each way, 256 KiB window: %v", d)
	if least := 32 * 2 * latency; d < least {
		t.Errorf("8 MiB through a 256 KiB window took %v, less than %v", d, least)
	}

	// Back to Pass in the middle of a transfer: what is on its way still
	// arrives first.
	got, err = echoBig(c, big, func() { p.Set(Fault{Mode: Pass}) })
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("switching to pass mid-transfer: %v (equal %v)", err, bytes.Equal(got, big))
	}
}

// TestDistantLink checks that LinkBytesPerSecond bounds the connections
// of a direction together: two connections echoing 2 MiB each through a
// path of 8 MiB/s take at least the 4 MiB's half second, where each one's
// window alone would let both through in a few round trips.
func TestDistantLink(t *testing.T) {
	const rate = 8 << 20
	p := Start(t, echo(t))
	if err := p.Set(Fault{Mode: Distant, Latency: 2 * time.Millisecond, LinkBytesPerSecond: rate}); err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 2<<20)
	for i := range msg {
		msg[i] = byte(i * 3 / 7)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() {
			c, err := net.Dial("tcp", p.Addr)
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			got, err := echoBig(c, msg, nil)
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("echoed bytes differ")
			}
			errs[i] = err
		})
	}
	wg.Wait()
	d := time.Since(start)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	t.Logf("two connections, 2 MiB each way each, 8 MiB/s path: %v", d)
	if least := time.Duration(2*len(msg)) * time.Second / rate; d < least {
		t.Errorf("took %v, less than the %v the path's rate allows", d, least)
	}
	if up, down := p.Bytes(); up != int64(2*len(msg)) || down != int64(2*len(msg)) {
		t.Errorf("Bytes: %d up, %d down; want %d each", up, down, 2*len(msg))
	}
}

// echoBig writes msg to an echo connection while reading it back, calling
// midway (if not nil) once half of msg is written.
func echoBig(c net.Conn, msg []byte, midway func()) ([]byte, error) {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	errc := make(chan error, 1)
	go func() {
		half := len(msg) / 2
		if _, err := c.Write(msg[:half]); err != nil {
			errc <- err
			return
		}
		if midway != nil {
			midway()
		}
		_, err := c.Write(msg[half:])
		errc <- err
	}()
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	if werr := <-errc; err == nil {
		err = werr
	}
	return got, err
}
