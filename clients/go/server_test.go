package modelroute_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	modelroute "github.com/modelroute/modelroute/clients/go"
)

// repoRoot is two levels above this package. The package may be reached through a
// GOPATH symlink (see test.sh), so resolve the real directory first.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(wd)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(real, "..", ".."))
}

// serverBin is the modelroute executable: $MODELROUTE_BIN or <repo>/.venv/bin/modelroute.
func serverBin(t *testing.T) string {
	if b := os.Getenv("MODELROUTE_BIN"); b != "" {
		return b
	}
	return filepath.Join(repoRoot(t), ".venv", "bin", "modelroute")
}

// testServer is a real modelroute replica (embedded etcd + SQLite) in a temp dir.
type testServer struct {
	Addr    string
	DataDir string
	Client  *modelroute.Client
}

var servingLine = regexp.MustCompile(`serving gRPC on (\S+)`)

// startServer starts `modelroute serve --port 0` on a fresh data dir, waits for the
// "serving" line and for a first successful ResolveModel, and stops it (SIGTERM) at
// the end of the test.
func startServer(t *testing.T) *testServer {
	t.Helper()
	dir := t.TempDir()
	root := repoRoot(t)
	cmd := exec.Command(serverBin(t), "serve", "--port", "0", "--admin-port", "-1", "--data-dir", dir,
		"--bootstrap", filepath.Join(root, "config", "bootstrap.yaml"))
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v (set MODELROUTE_BIN)", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("server stderr:\n%s", stderr.String())
		}
	})

	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := servingLine.FindStringSubmatch(sc.Text()); m != nil {
				addrCh <- m[1]
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrCh:
	case <-done:
		t.Fatalf("server exited before serving:\n%s", stderr.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("server did not print its address in 90s:\n%s", stderr.String())
	}

	c, err := modelroute.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := c.Resolve(ctx, "rag.answer", modelroute.ResolveOptions{})
		return err
	})
	return &testServer{Addr: addr, DataDir: dir, Client: c}
}

// etcdctl runs etcdctl against the server's embedded etcd.
func (s *testServer) etcdctl(t *testing.T, args ...string) {
	t.Helper()
	endpoint, err := os.ReadFile(filepath.Join(s.DataDir, "etcd.endpoint"))
	if err != nil {
		t.Fatal(err)
	}
	bin := os.Getenv("MODELROUTE_ETCDCTL")
	if bin == "" {
		bin = filepath.Join(filepath.Dir(serverBin(t)), "etcdctl")
	}
	full := append([]string{"--endpoints", strings.TrimSpace(string(endpoint))}, args...)
	if out, err := exec.Command(bin, full...).CombinedOutput(); err != nil {
		t.Fatalf("etcdctl %v: %v\n%s", args, err, out)
	}
}

// eventually polls cond until it returns nil or the timeout passes (no fixed sleeps:
// the server applies config and cooldowns asynchronously).
func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for the exec goroutine writing and the test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
