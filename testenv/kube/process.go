package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is one program of a cluster, its output going to a log file.
type process struct {
	name    string
	logFile string
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited; waitErr is set then
	waitErr error
	stopped bool // by stop, so an exit is expected
}

const (
	startTimeout = 60 * time.Second
	stopTimeout  = 10 * time.Second
	logTailLines = 40
)

var errAddrInUse = errors.New("address already in use")

// launch starts bin with the arguments args makes for nports free loopback
// ports, and waits until ready accepts it. A free port can be taken by
// someone else before the program binds it: then it tries again with new
// ports. On failure the error holds the end of the program's log.
func launch(ctx context.Context, name, logFile, bin string, nports int, args func(ports []int) []string, ready func(ctx context.Context, ports []int) error) (*process, []int, error) {
	var err error
	for range 3 {
		var ports []int
		if ports, err = freePorts(nports); err != nil {
			return nil, nil, err
		}
		var p *process
		if p, err = startProcess(name, logFile, bin, args(ports)...); err != nil {
			return nil, nil, err
		}
		if err = p.waitReady(ctx, func(ctx context.Context) error { return ready(ctx, ports) }); err == nil {
			return p, ports, nil
		}
		p.stop()
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	return nil, nil, err
}

func startProcess(name, logFile, bin string, args ...string) (*process, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	fmt.Fprintf(f, "# %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Die with the test binary even if it is killed before cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logFile: logFile, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReady polls ready until it returns nil, the process exits, or
// startTimeout passes.
func (p *process) waitReady(ctx context.Context, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var err error
	for {
		if err = ready(ctx); err == nil {
			return nil
		}
		select {
		case <-p.done:
			err = fmt.Errorf("%s exited during startup: %v", p.name, p.waitErr)
		case <-ctx.Done():
			err = fmt.Errorf("%s not ready after %v: %w", p.name, startTimeout, err)
		case <-time.After(100 * time.Millisecond):
			continue
		}
		log := p.logTail()
		if strings.Contains(log, "address already in use") {
			err = fmt.Errorf("%w: %w", errAddrInUse, err)
		}
		return fmt.Errorf("%w\n--- end of %s ---\n%s", err, p.logFile, log)
	}
}

// stop ends the process: SIGTERM, then SIGKILL after stopTimeout. It
// returns an error if the process had exited before it was asked to.
func (p *process) stop() error {
	if p.stopped {
		return nil
	}
	p.stopped = true
	select {
	case <-p.done:
		return fmt.Errorf("%s exited by itself: %v\n--- end of %s ---\n%s", p.name, p.waitErr, p.logFile, p.logTail())
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// logTail returns the last logTailLines lines of the log.
func (p *process) logTail() string {
	b, err := os.ReadFile(p.logFile)
	if err != nil {
		return err.Error()
	}
	lines := bytes.SplitAfter(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	return string(bytes.Join(lines, nil))
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
