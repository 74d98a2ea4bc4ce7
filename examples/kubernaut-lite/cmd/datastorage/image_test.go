package main

// The image as the E2E tooling builds it: scripts/prebuild.sh, then the
// Dockerfile with the example as context; then the container against a
// throwaway PostgreSQL server.

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// docker runs the docker CLI (legacy builder: no buildx needed), bounded by
// timeout; it returns stdout, stderr and the error.
func docker(timeout time.Duration, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

func dockerOK(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	stdout, stderr, err := docker(timeout, args...)
	if err != nil {
		t.Fatalf("docker %q failed (%v):\n%s%s", args, err, stdout, stderr)
	}
	return strings.TrimSpace(stdout)
}

// dockerUnavailable is why Docker cannot be used here, or "".
func dockerUnavailable() string {
	if _, err := exec.LookPath("docker"); err != nil {
		return fmt.Sprintf("no docker CLI: %v", err)
	}
	if _, stderr, err := docker(30*time.Second, "version", "--format", "{{.Server.Version}}"); err != nil {
		return fmt.Sprintf("the Docker engine does not answer (%v): %s", err, strings.TrimSpace(stderr))
	}
	return ""
}

// prebuild runs scripts/prebuild.sh datastorage; it returns its stderr and
// how long it took.
func prebuild(t *testing.T, root string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "scripts/prebuild.sh", "datastorage")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	started := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("prebuild failed (%v):\n%s", err, stderr.String())
	}
	return stderr.String(), time.Since(started)
}

// hasInterpreter says whether an ELF file asks for a program interpreter
// (the dynamic loader): a FROM-scratch image has none, so the binary must
// not.
func hasInterpreter(t *testing.T, path string) bool {
	t.Helper()
	file, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer file.Close()
	for _, prog := range file.Progs {
		if prog.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

func TestImageFromPrebuiltBinaryServesProbesAndAPI(t *testing.T) {
	if why := dockerUnavailable(); why != "" {
		skipOrFail(t, why)
	}
	pg := startPGWithAppDB(t)
	root := exampleRoot(t)

	// Prebuild twice: the second is a no-op that leaves bin/ untouched.
	_, first := prebuild(t, root)
	binary := filepath.Join(root, "bin", "datastorage")
	built, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(binary)
	if err != nil {
		t.Fatal(err)
	}
	if hasInterpreter(t, binary) {
		t.Fatal("bin/datastorage is not static")
	}
	again, second := prebuild(t, root)
	if !strings.Contains(again, "bin/datastorage unchanged") {
		t.Fatalf("second prebuild: %s", again)
	}
	rebuilt, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	info2, err := os.Stat(binary)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(built, rebuilt) || !info.ModTime().Equal(info2.ModTime()) {
		t.Fatal("an unchanged prebuild rewrote bin/datastorage")
	}
	t.Logf("prebuild: %.1fs, again %.1fs; binary %d bytes", first.Seconds(), second.Seconds(), len(built))

	unique := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	image := "localhost/kubernaut-lite-test/datastorage:" + unique
	name := "kubernaut-lite-test-datastorage-" + unique
	started := false
	// Remove the container and the image, also when the test fails.
	t.Cleanup(func() {
		if started {
			if t.Failed() {
				stdout, stderr, _ := docker(time.Minute, "logs", name)
				t.Logf("container logs:\n%s%s", stdout, stderr)
			}
			if _, stderr, err := docker(time.Minute, "rm", "-f", name); err != nil {
				t.Errorf("removing container %s: %v %s", name, err, stderr)
			}
		}
		if _, stderr, err := docker(time.Minute, "rmi", "-f", image); err != nil {
			t.Errorf("removing image %s: %v %s", image, err, stderr)
		}
	})
	dockerOK(t, 5*time.Minute, "build", "-q", "-f", filepath.Join(root, "docker", "data-storage.Dockerfile"), "-t", image, root)
	var config struct {
		Entrypoint   []string
		User         string
		ExposedPorts map[string]any
	}
	if err := json.Unmarshal([]byte(dockerOK(t, time.Minute, "image", "inspect", "--format", "{{json .Config}}", image)), &config); err != nil {
		t.Fatal(err)
	}
	_, has8080 := config.ExposedPorts["8080/tcp"]
	_, has9181 := config.ExposedPorts["9181/tcp"]
	if !reflect.DeepEqual(config.Entrypoint, []string{"/datastorage"}) || config.User != "65532:65532" || !has8080 || !has9181 {
		t.Fatalf("image config: %+v", config)
	}
	t.Logf("image %s: %s bytes", image, dockerOK(t, time.Minute, "image", "inspect", "--format", "{{.Size}}", image))

	// The database listens on 127.0.0.1 only, so the container shares the
	// host's network; its ports then come from the environment.
	port, metricsPort := freePort(t), freePort(t)
	args := []string{"run", "-d", "--name", name, "--network", "host",
		"-e", fmt.Sprintf("DATASTORAGE_PORT=%d", port), "-e", fmt.Sprintf("METRICS_PORT=%d", metricsPort)}
	for _, kv := range pg.serviceEnv("127.0.0.1") {
		args = append(args, "-e", kv)
	}
	started = true
	dockerOK(t, 2*time.Minute, append(args, image)...)

	health := waitForStatus(t, port, "/health", 200, 30*time.Second)
	sameAs(t, "/health", health.json(t), map[string]any{"status": "ok"})
	notReady := waitUntil(t, port, "/health/ready", 10*time.Second, func(r response) bool {
		return !strings.Contains(r.body, "database unavailable")
	})
	if notReady.status != 503 || !strings.Contains(str(notReady.json(t), "reason"), "audit_events") {
		t.Fatalf("%+v", notReady)
	}

	pg.migrate()
	if ready := get(t, port, "/health/ready"); ready.status != 200 {
		t.Fatalf("%+v", ready)
	}
	if created := post(t, port, events, map[string]any{"event_type": "image.test", "correlation_id": unique}); created.status != 201 {
		t.Fatalf("%+v", created)
	}
	listed := get(t, port, events+"?correlation_id="+unique).json(t)
	sameAs(t, "total", listed["pagination"].(map[string]any)["total"], 1)
	if metrics := get(t, metricsPort, "/metrics"); !strings.Contains(metrics.body, "datastorage_audit_events_written_total 1\n") {
		t.Fatalf("%s", metrics.body)
	}

	// docker stop sends SIGTERM, as scaling the deployment to 0 does.
	dockerOK(t, time.Minute, "stop", "-t", "15", name)
	if code := dockerOK(t, time.Minute, "inspect", "--format", "{{.State.ExitCode}}", name); code != "0" {
		t.Fatalf("exit code %s after SIGTERM", code)
	}
	logs := dockerOK(t, time.Minute, "logs", name)
	if !strings.Contains(logs, `"msg":"request"`) || !strings.Contains(logs, `"signal":"SIGTERM"`) {
		t.Fatalf("container logs:\n%s", logs)
	}
}
