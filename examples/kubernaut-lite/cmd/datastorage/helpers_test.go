package main

// Helpers of the tests that run the real binary (and its image) against a
// real PostgreSQL server: skipping, ports, the binary, child processes and
// a small HTTP client.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binaryDir  string
	buildOnce  sync.Once
	buildError error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "datastorage-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating a temporary folder for the binary:", err)
		os.Exit(1)
	}
	binaryDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ci says whether this run must not skip (CI sets CI=true).
func ci() bool { return strings.EqualFold(os.Getenv("CI"), "true") }

// skipOrFail reports why a test cannot run here: a skip, or a failure under
// CI=true (a skipped test must not count as a pass there).
func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if ci() {
		t.Fatalf("%s (required because CI=true)", why)
	}
	t.Skip(why)
}

// freePort is a TCP port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("binding an ephemeral port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// exampleRoot is examples/kubernaut-lite, the images' build context.
func exampleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func migrationsDir(t *testing.T) string { return filepath.Join(exampleRoot(t), "migrations") }

// datastorageBinary builds this package once per test run.
func datastorageBinary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(binaryDir, "datastorage")
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", path, ".").CombinedOutput()
		if err != nil {
			buildError = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return path
}

// proc is a child process whose exit is watched.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(cmd *exec.Cmd) (*proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// waitOrKill waits for the exit, sending SIGKILL after grace; it says
// whether the process exited by itself.
func (p *proc) waitOrKill(grace time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
	return false
}

// lineWriter keeps what a process prints, one entry a line.
type lineWriter struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.lines = append(w.lines, string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
}

func (w *lineWriter) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append(append([]string(nil), w.lines...), string(w.partial))
}

// dsService is the datastorage binary running as a child process.
type dsService struct {
	t           *testing.T
	proc        *proc
	port        int
	metricsPort int
	out         *lineWriter
}

// spawnService starts the binary with only env (plus free ports for
// DATASTORAGE_PORT and METRICS_PORT); it is killed at the test's end, its
// output printed if the test failed.
func spawnService(t *testing.T, env []string) *dsService {
	t.Helper()
	s := &dsService{t: t, port: freePort(t), metricsPort: freePort(t), out: &lineWriter{}}
	cmd := exec.Command(datastorageBinary(t))
	cmd.Env = append([]string{
		fmt.Sprintf("DATASTORAGE_PORT=%d", s.port),
		fmt.Sprintf("METRICS_PORT=%d", s.metricsPort),
	}, env...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	p, err := startProc(cmd)
	if err != nil {
		t.Fatalf("starting datastorage: %v", err)
	}
	s.proc = p
	t.Cleanup(func() {
		if !p.exited() {
			p.waitOrKill(0)
		}
		if t.Failed() {
			t.Logf("datastorage output:\n%s", s.output())
		}
	})
	return s
}

func (s *dsService) output() string { return strings.Join(s.out.all(), "\n") }

// logLines are the JSON objects the process printed.
func (s *dsService) logLines() []map[string]any {
	var objects []map[string]any
	for _, line := range s.out.all() {
		var object map[string]any
		if json.Unmarshal([]byte(line), &object) == nil {
			objects = append(objects, object)
		}
	}
	return objects
}

// waitHealthy waits (20 s at most) until /health answers 200.
func (s *dsService) waitHealthy() {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s.proc.exited() {
			s.t.Fatalf("datastorage exited (%v):\n%s", s.proc.cmd.ProcessState, s.output())
		}
		if r, err := request("GET", s.port, "/health", ""); err == nil && r.status == 200 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("datastorage did not serve /health in 20s:\n%s", s.output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// terminate sends SIGTERM and waits (20 s at most) for the exit code.
func (s *dsService) terminate() int {
	s.t.Helper()
	s.proc.signal(syscall.SIGTERM)
	if !s.proc.waitOrKill(20 * time.Second) {
		s.t.Fatalf("datastorage did not stop within 20s of SIGTERM:\n%s", s.output())
	}
	return s.proc.cmd.ProcessState.ExitCode()
}

// waitExit waits (timeout at most) for the process to exit by itself.
func (s *dsService) waitExit(timeout time.Duration) int {
	s.t.Helper()
	if !s.proc.waitOrKill(timeout) {
		s.t.Fatalf("datastorage did not exit within %s:\n%s", timeout, s.output())
	}
	return s.proc.cmd.ProcessState.ExitCode()
}

type response struct {
	status int
	header http.Header
	body   string
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var object map[string]any
	if err := json.Unmarshal([]byte(r.body), &object); err != nil {
		t.Fatalf("body is not a JSON object (%v): %s", err, r.body)
	}
	return object
}

// str is a string field of a JSON object ("" if absent or not a string).
func str(object map[string]any, key string) string {
	s, _ := object[key].(string)
	return s
}

var client = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// request sends one request to 127.0.0.1:port.
func request(method string, port int, path, body string) (response, error) {
	req, err := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), strings.NewReader(body))
	if err != nil {
		return response{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	return response{resp.StatusCode, resp.Header, string(data)}, nil
}

func get(t *testing.T, port int, path string) response {
	t.Helper()
	r, err := request("GET", port, path, "")
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return r
}

func post(t *testing.T, port int, path string, value any) response {
	t.Helper()
	body, err := json.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	r, err := request("POST", port, path, string(body))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return r
}

// waitUntil polls GET path until accept says yes; it fails with the last
// answer after timeout.
func waitUntil(t *testing.T, port int, path string, timeout time.Duration, accept func(response) bool) response {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r, err := request("GET", port, path, "")
		if err == nil && accept(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET 127.0.0.1:%d%s: still not as expected after %s; last: %+v %v", port, path, timeout, r, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func waitForStatus(t *testing.T, port int, path string, status int, timeout time.Duration) response {
	t.Helper()
	return waitUntil(t, port, path, timeout, func(r response) bool { return r.status == status })
}
