package datastorage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"
)

// EventsPath is the audit events API.
const EventsPath = "/api/v1/audit/events"

const (
	redisTimeout = 2 * time.Second
	// maxBody is the largest request body read.
	maxBody = 2 << 20
)

// Server holds what the handlers share.
type Server struct {
	Store   Store
	Metrics *Metrics
	// RedisAddr, when set, must accept a TCP connection for readiness.
	RedisAddr string
	Log       *slog.Logger
}

// routes maps a path to its handler by method; a GET handler also answers
// HEAD.
type routes map[string]map[string]http.HandlerFunc

// APIHandler serves the health probes and the audit events API, logging
// and counting every request.
func (s *Server) APIHandler() http.Handler {
	return s.serve(routes{
		"/health":       {http.MethodGet: s.health},
		"/health/ready": {http.MethodGet: s.ready},
		EventsPath:      {http.MethodGet: s.listEvents, http.MethodPost: s.createEvent},
	}, true)
}

// MetricsHandler serves GET /metrics, logging every request.
func (s *Server) MetricsHandler() http.Handler {
	return s.serve(routes{
		"/metrics": {http.MethodGet: s.Metrics.Handler(s.Store.Connected).ServeHTTP},
	}, false)
}

// serve routes by exact path (404 with a JSON body otherwise; 405 with Allow
// for another method), logs one line per request and, when counted, adds it
// to datastorage_http_requests_total under its route.
func (s *Server) serve(table routes, counted bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		path := r.URL.EscapedPath()
		recorder := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		route := "unmatched"
		if methods, ok := table[path]; ok {
			route = path
			handler := methods[r.Method]
			if handler == nil && r.Method == http.MethodHead {
				handler = methods[http.MethodGet]
			}
			if handler == nil {
				handler = methodNotAllowed(methods)
			}
			handler(recorder, r)
		} else {
			writeJSON(recorder, http.StatusNotFound, map[string]string{"error": "not found"})
		}
		millis := float64(time.Since(start).Microseconds()) / 1000
		s.Log.Info("request", "method", r.Method, "path", path, "status", recorder.status,
			"duration_ms", math.Round(millis*1000)/1000)
		if counted {
			s.Metrics.RecordRequest(r.Method, route, recorder.status)
		}
	})
}

func methodNotAllowed(methods map[string]http.HandlerFunc) http.HandlerFunc {
	allowed := make([]string, 0, len(methods)+1)
	for method := range methods {
		allowed = append(allowed, method)
		if method == http.MethodGet {
			allowed = append(allowed, http.MethodHead)
		}
	}
	sort.Strings(allowed)
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Allow", strings.Join(allowed, ","))
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// ready answers 200 when the database answers, the migrated tables exist
// and, if configured, Redis accepts a TCP connection; else 503 with the
// reasons (and missing_tables when tables are missing).
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	var reasons []string
	body := map[string]any{}
	missing, err := s.Store.MissingTables(r.Context())
	switch {
	case err != nil:
		reasons = append(reasons, err.Error())
	case len(missing) == 1:
		reasons = append(reasons, fmt.Sprintf("table %s does not exist: run the migrations", missing[0]))
		body["missing_tables"] = missing
	case len(missing) > 1:
		reasons = append(reasons, fmt.Sprintf("tables %s do not exist: run the migrations", strings.Join(missing, ", ")))
		body["missing_tables"] = missing
	}
	if s.RedisAddr != "" {
		conn, err := (&net.Dialer{Timeout: redisTimeout}).DialContext(r.Context(), "tcp", s.RedisAddr)
		var netErr net.Error
		switch {
		case err == nil:
			conn.Close()
		case errors.As(err, &netErr) && netErr.Timeout():
			reasons = append(reasons, fmt.Sprintf("redis at %s unreachable: no connection within %s", s.RedisAddr, redisTimeout))
		default:
			reasons = append(reasons, fmt.Sprintf("redis at %s unreachable: %v", s.RedisAddr, err))
		}
	}
	if len(reasons) == 0 {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return
	}
	body["status"] = "not ready"
	body["reason"] = strings.Join(reasons, "; ")
	writeJSON(w, http.StatusServiceUnavailable, body)
}

// writeJSON answers with status and value as JSON, `<`, `>` and `&` as
// they are (stored events come back as they were sent).
func writeJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	encoder := json.NewEncoder(w)
	encoder.SetEscapeHTML(false)
	_ = encoder.Encode(value)
}

func invalid(w http.ResponseWriter, err *ValidationError) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Message, "field": err.Field})
}

func (s *Server) dbFailure(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var dbErr *DBError
	if errors.As(err, &dbErr) {
		status = dbErr.HTTPStatus()
	}
	s.Log.Warn("database call failed", "error", err.Error())
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func (s *Server) createEvent(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{
			"error": fmt.Sprintf("body is larger than %d bytes", maxBody), "field": "body"})
		return
	case err != nil:
		invalid(w, invalidf("body", "reading the body: %v", err))
		return
	}
	event, verr := ParseNewEvent(body)
	if verr != nil {
		invalid(w, verr)
		return
	}
	id, err := s.Store.InsertEvent(r.Context(), event)
	if err != nil {
		s.dbFailure(w, err)
		return
	}
	s.Metrics.RecordEventWritten()
	writeJSON(w, http.StatusCreated, map[string]string{"event_id": id})
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	query, verr := ParseListQuery(QueryParams(r.URL.RawQuery))
	if verr != nil {
		invalid(w, verr)
		return
	}
	events, total, err := s.Store.ListEvents(r.Context(), query)
	if err != nil {
		s.dbFailure(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"data":       events,
		"pagination": map[string]int64{"limit": query.Limit, "total": total},
	})
}
