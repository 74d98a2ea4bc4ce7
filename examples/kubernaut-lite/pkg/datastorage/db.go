package datastorage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RequiredTables are the tables the migrations create; the service is ready
// only when all of them exist.
var RequiredTables = []string{"audit_events", "audit_retention_policies"}

const (
	connectTimeout = 5 * time.Second
	queryTimeout   = 10 * time.Second
	// After a failed connection attempt, callers get that failure back for
	// this long instead of each waiting on a new attempt.
	retryAfter = time.Second
	// How often the start-up connection is retried.
	connectRetry = 2 * time.Second
)

// DBErrorKind says what a failed database call means for the caller.
type DBErrorKind int

const (
	// Unavailable: no connection could be made, or it broke.
	Unavailable DBErrorKind = iota
	// MissingSchema: a table the service needs is missing (the migrations
	// did not run).
	MissingSchema
	// QueryFailed: anything else PostgreSQL refused.
	QueryFailed
)

// DBError is why a database call failed.
type DBError struct {
	Kind   DBErrorKind
	Detail string
}

func (e *DBError) Error() string {
	switch e.Kind {
	case MissingSchema:
		return e.Detail + ": run the migrations"
	case QueryFailed:
		return "database error: " + e.Detail
	default:
		return "database unavailable: " + e.Detail
	}
}

// HTTPStatus is the answer to a request that failed this way: 503 while the
// database is down or not migrated (it may come right), else 500.
func (e *DBError) HTTPStatus() int {
	if e.Kind == QueryFailed {
		return http.StatusInternalServerError
	}
	return http.StatusServiceUnavailable
}

// Store is what the handlers need of the database.
type Store interface {
	// Connected says whether the database answered the last call.
	Connected() bool
	// MissingTables checks that the database answers and lists which of
	// RequiredTables do not exist (sorted).
	MissingTables(ctx context.Context) ([]string, error)
	// InsertEvent writes one event and returns its id.
	InsertEvent(ctx context.Context, event *NewEvent) (string, error)
	// ListEvents returns the events matching query, newest first, and how
	// many match in all.
	ListEvents(ctx context.Context, query ListQuery) ([]Event, int64, error)
}

// DB is the PostgreSQL database: connections are opened when needed and
// opened again after they break; a database that is down is never fatal.
// A call made while it is down fails (and readiness says so); the next call
// tries again.
type DB struct {
	pool   *pgxpool.Pool
	target string
	log    *slog.Logger

	mu        sync.Mutex
	connected bool
	failure   string
	failedAt  time.Time
}

// OpenDB prepares the connections to the database cfg names; it connects
// nothing yet.
func OpenDB(cfg DBConfig, log *slog.Logger) (*DB, error) {
	config, err := pgxpool.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, fmt.Errorf("database settings: %w", err)
	}
	// Only the service's own variables count, not PG* ones in the
	// environment.
	conn := config.ConnConfig
	conn.Host, conn.Port, conn.Database = cfg.Host, cfg.Port, cfg.Name
	conn.User, conn.Password = cfg.User, cfg.Password
	conn.TLSConfig, conn.Fallbacks, conn.ValidateConnect = nil, nil, nil
	conn.RuntimeParams = map[string]string{"application_name": "datastorage"}
	conn.ConnectTimeout = connectTimeout
	conn.DialFunc = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	pool, err := pgxpool.NewWithConfig(context.Background(), config)
	if err != nil {
		return nil, fmt.Errorf("database settings: %w", err)
	}
	return &DB{pool: pool, target: cfg.Target(), log: log}, nil
}

// Close closes the connections.
func (db *DB) Close() { db.pool.Close() }

// Connected says whether the database answered the last call.
func (db *DB) Connected() bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.connected
}

// ConnectInBackground tries to connect every 2 s until the database
// answers, or ctx ends.
func (db *DB) ConnectInBackground(ctx context.Context) {
	for {
		err := db.do(ctx, func(ctx context.Context, conn *pgxpool.Conn) error { return conn.Ping(ctx) })
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(connectRetry):
		}
	}
}

func (db *DB) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	db.mu.Lock()
	if db.failure != "" && time.Since(db.failedAt) < retryAfter {
		failure := db.failure
		db.mu.Unlock()
		return nil, &DBError{Kind: Unavailable, Detail: failure}
	}
	db.mu.Unlock()

	attempt, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := db.pool.Acquire(attempt)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &DBError{Kind: Unavailable, Detail: ctx.Err().Error()}
		}
		reason := fmt.Sprintf("connecting to %s: %v", db.target, err)
		if errors.Is(err, context.DeadlineExceeded) {
			reason = fmt.Sprintf("connecting to %s timed out after %s", db.target, connectTimeout)
		}
		db.mu.Lock()
		if db.connected {
			db.log.Warn("database connection lost", "target", db.target)
		}
		if db.failure == "" {
			db.log.Warn("database unavailable", "error", reason)
		}
		db.connected, db.failure, db.failedAt = false, reason, time.Now()
		db.mu.Unlock()
		return nil, &DBError{Kind: Unavailable, Detail: reason}
	}
	return conn, nil
}

func (db *DB) answered() {
	db.mu.Lock()
	defer db.mu.Unlock()
	if !db.connected {
		db.log.Info("database connected", "target", db.target)
	}
	db.connected, db.failure = true, ""
}

// do runs work on a connection, bounded by the query timeout, and
// classifies its error.
func (db *DB) do(ctx context.Context, work func(context.Context, *pgxpool.Conn) error) error {
	conn, err := db.acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	queryCtx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	err = work(queryCtx, conn)
	if err == nil {
		db.answered()
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !connectionEnded(pgErr) {
		// An answer from the server: the connection is fine.
		db.answered()
		if pgErr.Code == "42P01" { // undefined_table
			return &DBError{Kind: MissingSchema, Detail: pgErr.Message}
		}
		return &DBError{Kind: QueryFailed, Detail: pgErr.Message}
	}
	if ctx.Err() != nil {
		// The client went away; that says nothing about the database.
		return &DBError{Kind: Unavailable, Detail: ctx.Err().Error()}
	}
	detail := err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		detail = fmt.Sprintf("no answer within %s", queryTimeout)
	}
	db.mu.Lock()
	if db.connected {
		db.log.Warn("database connection lost", "target", db.target, "error", detail)
	}
	db.connected = false
	db.mu.Unlock()
	return &DBError{Kind: Unavailable, Detail: detail}
}

// connectionEnded says whether the server ended the session with this error
// (a shutdown, a terminated backend) rather than refusing one statement.
func connectionEnded(err *pgconn.PgError) bool {
	return err.Severity == "FATAL" || err.Severity == "PANIC" ||
		strings.HasPrefix(err.Code, "08") || strings.HasPrefix(err.Code, "57P")
}

// MissingTables checks that the database answers and lists which of
// RequiredTables do not exist.
func (db *DB) MissingTables(ctx context.Context) ([]string, error) {
	missing := []string{}
	err := db.do(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		rows, err := conn.Query(ctx,
			"SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL ORDER BY t",
			RequiredTables)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var table string
			if err := rows.Scan(&table); err != nil {
				return err
			}
			missing = append(missing, table)
		}
		return rows.Err()
	})
	return missing, err
}

// InsertEvent writes one event and returns its id.
func (db *DB) InsertEvent(ctx context.Context, event *NewEvent) (string, error) {
	var id string
	err := db.do(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		return conn.QueryRow(ctx,
			`INSERT INTO audit_events (event_type, event_category, event_action,
			 event_outcome, correlation_id, actor_id, resource_type, resource_id, event_data)
			 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb)
			 RETURNING event_id::text`,
			event.EventType, event.EventCategory, event.EventAction, event.EventOutcome,
			event.CorrelationID, event.ActorID, event.ResourceType, event.ResourceID,
			string(event.EventData),
		).Scan(&id)
	})
	return id, err
}

const listFilter = `($1::text IS NULL OR correlation_id = $1)
	AND ($2::text IS NULL OR event_type = $2)`

// ListEvents returns the events matching query, newest first, and how many
// match in all.
func (db *DB) ListEvents(ctx context.Context, query ListQuery) ([]Event, int64, error) {
	events := []Event{}
	var total int64
	err := db.do(ctx, func(ctx context.Context, conn *pgxpool.Conn) error {
		rows, err := conn.Query(ctx,
			`SELECT event_id::text,
			 to_char(event_timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
			 event_type, event_category, event_action, event_outcome,
			 correlation_id, actor_id, resource_type, resource_id, event_data::text
			 FROM audit_events WHERE `+listFilter+`
			 ORDER BY event_timestamp DESC, event_id LIMIT $3`,
			query.CorrelationID, query.EventType, query.Limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e Event
			var data string
			if err := rows.Scan(&e.EventID, &e.EventTimestamp, &e.EventType, &e.EventCategory,
				&e.EventAction, &e.EventOutcome, &e.CorrelationID, &e.ActorID, &e.ResourceType,
				&e.ResourceID, &data); err != nil {
				return err
			}
			e.EventData = decodeJSON(data)
			events = append(events, e)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		return conn.QueryRow(ctx, "SELECT count(*) FROM audit_events WHERE "+listFilter,
			query.CorrelationID, query.EventType).Scan(&total)
	})
	if err != nil {
		return nil, 0, err
	}
	return events, total, nil
}

// decodeJSON is the value of a jsonb column's text, numbers kept as written
// and object keys sorted when encoded again; nil (null) if it does not parse.
func decodeJSON(text string) any {
	decoder := json.NewDecoder(bytes.NewReader([]byte(text)))
	decoder.UseNumber()
	var value any
	if decoder.Decode(&value) != nil {
		return nil
	}
	return value
}
