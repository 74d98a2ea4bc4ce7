// DataStorage: audit events in PostgreSQL behind an HTTP API.
//
// Configuration: environment variables only (DATASTORAGE_PORT, METRICS_PORT,
// DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, DB_SSLMODE, REDIS_ADDR;
// see the example's README). A missing or malformed one exits 2, naming it;
// a database that is down is not fatal. SIGTERM or SIGINT drains requests in
// flight (10 s at most) and exits 0.
package main

import (
	"fmt"
	"os"
	"time"

	"kubernaut-lite/pkg/datastorage"
	"kubernaut-lite/pkg/service"
)

func main() {
	log := service.Logger("datastorage")
	cfg, err := datastorage.ConfigFromEnv()
	if err != nil {
		service.Fatal(log, "invalid configuration", err)
	}
	db, err := datastorage.OpenDB(cfg.DB, log)
	if err != nil {
		service.Fatal(log, "invalid configuration", err)
	}
	ctx, stop := service.LoggedSignalContext(log)
	defer stop()
	log.Info("datastorage starting", "api", fmt.Sprintf(":%d", cfg.Port),
		"metrics", fmt.Sprintf(":%d", cfg.MetricsPort), "database", cfg.DB.Target(), "redis", cfg.RedisAddr)
	// Connect in the background; readiness reports the state meanwhile.
	go db.ConnectInBackground(ctx)

	srv := &datastorage.Server{Store: db, Metrics: datastorage.NewMetrics(), RedisAddr: cfg.RedisAddr, Log: log}
	err = service.Run(ctx, log,
		service.Server{Addr: fmt.Sprintf(":%d", cfg.Port), Handler: srv.APIHandler()},
		service.Server{Addr: fmt.Sprintf(":%d", cfg.MetricsPort), Handler: srv.MetricsHandler()},
	)
	closeWithin(db, 2*time.Second)
	if err != nil {
		log.Error("fatal", "error", err.Error())
		os.Exit(1)
	}
	log.Info("stopped")
}

// closeWithin closes the database connections, waiting at most timeout for
// requests still holding one.
func closeWithin(db *datastorage.DB, timeout time.Duration) {
	closed := make(chan struct{})
	go func() {
		db.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(timeout):
	}
}
