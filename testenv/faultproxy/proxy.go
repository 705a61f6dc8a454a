// Package faultproxy is a TCP proxy for tests that stands between Ferry and
// one object store and misbehaves on demand: it refuses connections, resets
// them, answers slowly, or accepts and then says nothing, the ways a
// target in another region fails. Faults switch at any time, also in the
// middle of a transfer, and apply to open connections as well as new ones.
package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Mode is how the proxy treats traffic.
type Mode int

const (
	// Pass forwards traffic unchanged.
	Pass Mode = iota
	// Refuse closes the listening socket, so connecting fails with
	// ECONNREFUSED, and closes the open connections.
	Refuse
	// Reset aborts every open connection with a TCP RST and resets each
	// new one as soon as it is accepted.
	Reset
	// Slow forwards with Latency added before every chunk and at most
	// BytesPerSecond each way per connection.
	Slow
	// Hang accepts connections and forwards nothing in either direction,
	// as a black-holed route does.
	Hang
)

func (m Mode) String() string {
	return [...]string{"pass", "refuse", "reset", "slow", "hang"}[m]
}

// Fault is the proxy's behaviour.
type Fault struct {
	Mode           Mode
	Latency        time.Duration // Slow: before every chunk forwarded
	BytesPerSecond int           // Slow: per connection and direction; 0 means no limit
}

// Proxy forwards connections from Addr to a target.
type Proxy struct {
	Addr   string // host:port to connect to instead of the target
	target string

	mu      sync.Mutex
	cond    *sync.Cond // signalled when the fault changes
	fault   Fault
	lis     net.Listener
	conns   map[*link]bool
	closed  bool
	stopped chan struct{}
	wg      sync.WaitGroup
}

// link is one proxied connection.
type link struct{ client, server *net.TCPConn }

// Start starts a proxy to target (host:port) on a free loopback port; it
// stops when the test ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatalf("fault proxy: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// New starts a proxy to target on a free loopback port.
func New(target string) (*Proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: lis.Addr().String(), target: target, lis: lis, conns: map[*link]bool{}, stopped: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept(lis)
	return p, nil
}

// Set changes the fault, at once for open connections too.
func (p *Proxy) Set(f Fault) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("fault proxy: closed")
	}
	prev := p.fault.Mode
	p.fault = f
	p.cond.Broadcast()
	switch {
	case f.Mode == Refuse && p.lis != nil:
		p.lis.Close()
		p.lis = nil
		p.dropAll(false)
	case f.Mode == Reset:
		p.dropAll(true)
	case prev == Refuse && f.Mode != Refuse:
		lis, err := net.Listen("tcp", p.Addr) // the same port again
		if err != nil {
			return fmt.Errorf("fault proxy: listen again on %s: %w", p.Addr, err)
		}
		p.lis = lis
		p.wg.Add(1)
		go p.accept(lis)
	}
	return nil
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stopped)
	if p.lis != nil {
		p.lis.Close()
	}
	p.dropAll(false)
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
}

// dropAll closes the open connections, with an RST when reset. p.mu held.
func (p *Proxy) dropAll(reset bool) {
	for l := range p.conns {
		for _, c := range []*net.TCPConn{l.client, l.server} {
			if reset {
				c.SetLinger(0)
			}
			c.Close()
		}
		delete(p.conns, l)
	}
}

func (p *Proxy) accept(lis net.Listener) {
	defer p.wg.Done()
	for {
		c, err := lis.Accept()
		if err != nil {
			return // closed: Refuse or Close
		}
		p.wg.Add(1)
		go p.serve(c.(*net.TCPConn))
	}
}

func (p *Proxy) serve(client *net.TCPConn) {
	defer p.wg.Done()
	p.mu.Lock()
	f := p.fault
	p.mu.Unlock()
	if f.Mode == Reset {
		client.SetLinger(0)
		client.Close()
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		client.SetLinger(0)
		client.Close()
		return
	}
	l := &link{client, server.(*net.TCPConn)}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.conns[l] = true
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(l.server, l.client) })
	wg.Go(func() { p.pipe(l.client, l.server) })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
	client.Close()
	server.Close()
}

// pipe copies src to dst chunk by chunk, applying the fault in force when
// each chunk arrives.
func (p *Proxy) pipe(dst, src *net.TCPConn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.forward(dst, buf[:n]) {
			return
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				dst.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}

// forward writes b to dst under the current fault; false when the
// connection is gone.
func (p *Proxy) forward(dst *net.TCPConn, b []byte) bool {
	p.mu.Lock()
	for p.fault.Mode == Hang && !p.closed {
		p.cond.Wait() // hold the bytes until the fault changes
	}
	f, closed := p.fault, p.closed
	p.mu.Unlock()
	if closed {
		return false
	}
	if f.Mode == Slow {
		wait := f.Latency
		if f.BytesPerSecond > 0 {
			wait += time.Duration(len(b)) * time.Second / time.Duration(f.BytesPerSecond)
		}
		select {
		case <-time.After(wait):
		case <-p.stopped:
			return false
		}
	}
	_, err := dst.Write(b)
	return err == nil
}
