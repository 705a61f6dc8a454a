// Package faultproxy is a TCP proxy for tests that stands between Ferry and
// one object store and misbehaves on demand: it refuses connections, resets
// them, answers slowly, or accepts and then says nothing, the ways a
// target in another region fails; or it stands for the distance itself
// (Distant). Faults switch at any time, also in the middle of a transfer,
// and apply to open connections as well as new ones.
package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"
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
	// Distant forwards everything as a path to another region does: each
	// chunk arrives Latency after it was sent, chunks follow each other
	// without waiting for the ones before (unlike Slow), at most
	// BytesPerSecond each way per connection, and at most Window bytes of
	// a direction are unacknowledged (on their way, or their
	// acknowledgement another Latency on its way back), as TCP's window
	// bounds one connection over a long path: Window/(2*Latency) per
	// connection at most. LinkBytesPerSecond bounds all connections
	// together, as the path's bandwidth does.
	Distant
)

func (m Mode) String() string {
	return [...]string{"pass", "refuse", "reset", "slow", "hang", "distant"}[m]
}

// Fault is the proxy's behaviour.
type Fault struct {
	Mode           Mode
	Latency        time.Duration // Slow: before every chunk forwarded; Distant: one way
	BytesPerSecond int           // Slow, Distant: per connection and direction; 0 means no limit
	Window         int           // Distant: bytes unacknowledged per connection and direction; 0 means DefaultWindow
	// Distant: per direction for all connections together; 0 means no limit
	LinkBytesPerSecond int
}

// DefaultWindow is a Distant connection's window when Fault.Window is 0:
// what Linux's receive buffer autotuning reaches by default (tcp_rmem's
// maximum is 6 MiB, of which it offers about two thirds).
const DefaultWindow = 4 << 20

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

	// Each direction's path: to the target (up) and back (down).
	up, down pathClock
}

// pathClock is one direction of the path to the target: when the last
// chunk sent on it has left the sender, at Fault.LinkBytesPerSecond.
type pathClock struct {
	mu   sync.Mutex
	sent time.Time

	bytes atomic.Int64 // forwarded this way, under any fault
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

// Bytes returns how many bytes the proxy has forwarded to the target (up)
// and from it (down) since it started.
func (p *Proxy) Bytes() (up, down int64) { return p.up.bytes.Load(), p.down.bytes.Load() }

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
	if f.Mode == Distant {
		// What the proxy has read is on the path: small receive buffers,
		// so that the window, not the buffers, bounds what is.
		client.SetReadBuffer(64 << 10)
		l.server.SetReadBuffer(64 << 10)
	}
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
	wg.Go(func() { p.pipe(l.server, l.client, &p.up) })
	wg.Go(func() { p.pipe(l.client, l.server, &p.down) })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
	client.Close()
	server.Close()
}

// chunkSize is the most a pipe reads, and forwards, at once.
const chunkSize = 32 << 10

// pipe copies src to dst chunk by chunk, applying the fault in force when
// each chunk arrives. From the first chunk that arrives while the fault
// is Distant on, every chunk of the direction goes through a delay line,
// so that none overtakes another when the fault changes.
func (p *Proxy) pipe(dst, src *net.TCPConn, path *pathClock) {
	var line *delayLine
	defer func() {
		if line != nil {
			line.stop()
		}
	}()
	buf := make([]byte, chunkSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			f := p.fault
			p.mu.Unlock()
			if line == nil && f.Mode == Distant {
				line = p.newDelayLine(dst, path)
			}
			ok := false
			if line != nil {
				ok = line.send(buf[:n], f)
			} else {
				ok = p.forward(dst, buf[:n])
			}
			if !ok {
				return
			}
			path.bytes.Add(int64(n))
		}
		if err != nil {
			if line != nil && errors.Is(err, io.EOF) {
				line.drain() // what is on its way arrives before the end
			}
			if errors.Is(err, io.EOF) {
				dst.CloseWrite()
			} else {
				dst.Close()
			}
			return
		}
	}
}

// delayLine is one direction of a connection while it is (or has been)
// Distant: chunks wait in it until they are due, and a window bounds the
// bytes not yet acknowledged.
type delayLine struct {
	p      *Proxy
	dst    *net.TCPConn
	path   *pathClock // the direction's, shared by every connection
	q      chan timed
	done   chan struct{} // closed when the writer has stopped
	failed chan struct{} // closed when a write failed or the proxy stopped
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	window *semaphore.Weighted
	size   int       // the window's size
	sent   time.Time // when the last chunk queued has left the sender, at the rate
}

// timed is a chunk and when it arrives.
type timed struct {
	b       []byte
	due     time.Time
	latency time.Duration // one way: the acknowledgement takes as long
	window  *semaphore.Weighted
}

var chunkPool = sync.Pool{New: func() any { return make([]byte, chunkSize) }}

func (p *Proxy) newDelayLine(dst *net.TCPConn, path *pathClock) *delayLine {
	ctx, cancel := context.WithCancel(context.Background())
	l := &delayLine{p: p, dst: dst, path: path, q: make(chan timed, 4096), done: make(chan struct{}), failed: make(chan struct{}), ctx: ctx, cancel: cancel}
	go func() {
		select {
		case <-p.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	go l.write()
	return l
}

// send queues b (copied) to arrive when f says, once the window has room
// for it; false when the connection or the proxy is gone.
func (l *delayLine) send(b []byte, f Fault) bool {
	now := time.Now()
	c := timed{b: chunkPool.Get().([]byte)[:len(b)], due: now}
	copy(c.b, b)
	if f.Mode == Distant {
		l.mu.Lock()
		size := f.Window
		if size <= 0 {
			size = DefaultWindow
		}
		size = max(size, chunkSize)
		if l.window == nil || l.size != size {
			// A new window size takes effect for the chunks sent from
			// now on; those under the old one release into it.
			l.window, l.size = semaphore.NewWeighted(int64(size)), size
		}
		w := l.window
		l.mu.Unlock()
		if err := w.Acquire(l.ctx, int64(len(b))); err != nil {
			chunkPool.Put(c.b[:chunkSize])
			return false
		}
		now = time.Now()
		l.mu.Lock()
		sent := now
		if l.sent.After(sent) {
			sent = l.sent // behind the chunks before it on the wire
		}
		if f.BytesPerSecond > 0 {
			sent = sent.Add(time.Duration(len(b)) * time.Second / time.Duration(f.BytesPerSecond))
		}
		if f.LinkBytesPerSecond > 0 {
			// In turn with the other connections' chunks on the path.
			l.path.mu.Lock()
			on := now
			if l.path.sent.After(on) {
				on = l.path.sent
			}
			on = on.Add(time.Duration(len(b)) * time.Second / time.Duration(f.LinkBytesPerSecond))
			l.path.sent = on
			l.path.mu.Unlock()
			if on.After(sent) {
				sent = on
			}
		}
		l.sent = sent
		l.mu.Unlock()
		c.due, c.latency, c.window = sent.Add(f.Latency), f.Latency, w
	}
	select {
	case l.q <- c:
		return true
	case <-l.ctx.Done():
		chunkPool.Put(c.b[:chunkSize])
		return false
	}
}

// write forwards the chunks when they are due, under the fault in force
// then (Hang holds them, Slow delays them further), and gives their bytes
// back to the window one latency later, when the acknowledgement would
// reach the sender.
func (l *delayLine) write() {
	defer close(l.done)
	for c := range l.q {
		if d := time.Until(c.due); d > 0 {
			select {
			case <-time.After(d):
			case <-l.ctx.Done():
			}
		}
		ok := l.ctx.Err() == nil && l.p.forward(l.dst, c.b)
		n := int64(len(c.b))
		chunkPool.Put(c.b[:chunkSize])
		if c.window != nil {
			w := c.window
			time.AfterFunc(c.latency, func() { w.Release(n) })
		}
		if !ok {
			l.cancel()
			for c := range l.q { // free what is left; send sees ctx done
				chunkPool.Put(c.b[:chunkSize])
			}
			return
		}
	}
}

// drain waits until every chunk queued has been forwarded (or the
// connection is gone).
func (l *delayLine) drain() {
	close(l.q)
	<-l.done
	l.q = nil
}

// stop ends the line: chunks not yet forwarded are dropped.
func (l *delayLine) stop() {
	l.cancel()
	if l.q != nil {
		close(l.q)
		<-l.done
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
