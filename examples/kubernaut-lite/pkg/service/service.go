// Package service is what every stand-in's main shares: JSON logs on stdout,
// configuration from the environment, Prometheus counters, and serving until
// SIGTERM or SIGINT with a bounded graceful stop.
package service

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Logger writes one JSON object per line on stdout.
func Logger(service string) *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stdout, nil)).With("service", service)
}

// Fatal logs a configuration or start-up problem and exits 2.
func Fatal(log *slog.Logger, msg string, err error) {
	log.Error(msg, "error", err.Error())
	os.Exit(2)
}

// Env is the variable's value, or fallback when unset or empty.
func Env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

// RequireEnv is the variable's value, or an error naming it.
func RequireEnv(name string) (string, error) {
	value := os.Getenv(name)
	if value == "" {
		return "", fmt.Errorf("%s is required", name)
	}
	return value, nil
}

// ReadJSON decodes the file at path into out, refusing unknown fields so a
// misspelt key is an error naming the file.
func ReadJSON(path string, out any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	decoder := json.NewDecoder(strings.NewReader(string(data)))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(out); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// WriteJSON answers with status and value as JSON.
func WriteJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(value)
}

// Counters are labelled Prometheus counters, served as text.
type Counters struct {
	mu     sync.Mutex
	help   map[string]string
	values map[string]map[string]float64
}

// NewCounters declares the counters by name with their help text.
func NewCounters(help map[string]string) *Counters {
	values := map[string]map[string]float64{}
	for name := range help {
		values[name] = map[string]float64{}
	}
	return &Counters{help: help, values: values}
}

// Inc adds one to the counter name with labels like `route="/x",code="200"`.
func (c *Counters) Inc(name, labels string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.values[name] == nil {
		c.values[name] = map[string]float64{}
	}
	c.values[name][labels]++
}

// Value is the counter's current value (tests).
func (c *Counters) Value(name, labels string) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.values[name][labels]
}

// ServeHTTP writes the Prometheus text format.
func (c *Counters) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.values))
	for name := range c.values {
		names = append(names, name)
	}
	sort.Strings(names)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	for _, name := range names {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", name, c.help[name], name)
		series := c.values[name]
		if len(series) == 0 {
			fmt.Fprintf(w, "%s 0\n", name)
		}
		keys := make([]string, 0, len(series))
		for labels := range series {
			keys = append(keys, labels)
		}
		sort.Strings(keys)
		for _, labels := range keys {
			if labels == "" {
				fmt.Fprintf(w, "%s %g\n", name, series[labels])
			} else {
				fmt.Fprintf(w, "%s{%s} %g\n", name, labels, series[labels])
			}
		}
	}
}

// Logged logs every request as one line and counts it.
func Logged(log *slog.Logger, counters *Counters, counter string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		recorder := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(recorder, r)
		log.Info("request", "method", r.Method, "path", r.URL.Path, "status", recorder.status,
			"duration_ms", time.Since(start).Milliseconds())
		if counters != nil {
			counters.Inc(counter, fmt.Sprintf(`method=%q,path=%q,code="%d"`, r.Method, r.URL.Path, recorder.status))
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// Server is one listener: plain HTTP, or HTTPS when TLS is set.
type Server struct {
	Addr    string
	Handler http.Handler
	TLS     *tls.Config
}

// SignalContext ends on SIGTERM or SIGINT: pass it to Run and to background
// work, so both stop together.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// LoggedSignalContext is SignalContext that also logs the signal that ended
// it ("shutting down", with signal SIGTERM or SIGINT); later signals are
// ignored, so the graceful stop runs to its end.
func LoggedSignalContext(log *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case sig := <-signals:
			// Still notified: a second signal does not kill the drain.
			name := "SIGINT"
			if sig == syscall.SIGTERM {
				name = "SIGTERM"
			}
			log.Info("shutting down", "signal", name)
			cancel()
		case <-ctx.Done():
			signal.Stop(signals)
		}
	}()
	return ctx, cancel
}

// Run serves every server until ctx ends (see SignalContext) or a server
// fails, then stops them, letting requests in flight finish (10 s at most).
func Run(ctx context.Context, log *slog.Logger, servers ...Server) error {
	failed := make(chan error, len(servers))
	running := make([]*http.Server, 0, len(servers))
	for _, s := range servers {
		srv := &http.Server{Addr: s.Addr, Handler: s.Handler, TLSConfig: s.TLS, ReadHeaderTimeout: 10 * time.Second}
		running = append(running, srv)
		go func() {
			var err error
			if s.TLS != nil {
				err = srv.ListenAndServeTLS("", "")
			} else {
				err = srv.ListenAndServe()
			}
			if !errors.Is(err, http.ErrServerClosed) {
				failed <- fmt.Errorf("serving on %s: %w", s.Addr, err)
			}
		}()
		log.Info("listening", "addr", s.Addr, "tls", s.TLS != nil)
	}
	var result error
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case result = <-failed:
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, srv := range running {
		if err := srv.Shutdown(shutdown); err != nil {
			log.Warn("requests still in flight after the drain timeout", "addr", srv.Addr)
		}
	}
	return result
}

// MetricsHandler serves counters on GET /metrics.
func MetricsHandler(counters *Counters) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", counters)
	return mux
}
