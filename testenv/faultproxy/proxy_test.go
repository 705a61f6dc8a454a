package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
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
