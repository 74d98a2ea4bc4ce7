package datastorage

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// fakeStore keeps events in memory; err, when set, fails every call.
type fakeStore struct {
	mu      sync.Mutex
	missing []string
	err     error
	events  []*NewEvent
	queries []ListQuery
}

func (f *fakeStore) Connected() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err == nil
}

func (f *fakeStore) MissingTables(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.missing, f.err
}

func (f *fakeStore) InsertEvent(_ context.Context, event *NewEvent) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	f.events = append(f.events, event)
	return "00000000-0000-0000-0000-00000000000" + string(rune('0'+len(f.events))), nil
}

func (f *fakeStore) ListEvents(_ context.Context, query ListQuery) ([]Event, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, 0, f.err
	}
	f.queries = append(f.queries, query)
	events := []Event{}
	for i := len(f.events) - 1; i >= 0; i-- {
		e := f.events[i]
		if query.CorrelationID == nil || *query.CorrelationID == e.CorrelationID {
			events = append(events, Event{EventID: "id", EventType: e.EventType, CorrelationID: e.CorrelationID,
				EventCategory: e.EventCategory, EventData: decodeJSON(string(e.EventData))})
		}
	}
	total := int64(len(events))
	if int64(len(events)) > query.Limit {
		events = events[:query.Limit]
	}
	return events, total, nil
}

// syncBuffer collects the log lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines() []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		var object map[string]any
		if json.Unmarshal([]byte(line), &object) == nil {
			out = append(out, object)
		}
	}
	return out
}

type fixture struct {
	store   *fakeStore
	server  *Server
	api     *httptest.Server
	metrics *httptest.Server
	logs    *syncBuffer
}

func newFixture(t *testing.T) *fixture {
	logs := &syncBuffer{}
	f := &fixture{store: &fakeStore{}, logs: logs}
	f.server = &Server{Store: f.store, Metrics: NewMetrics(), Log: slog.New(slog.NewJSONHandler(logs, nil))}
	f.api = httptest.NewServer(f.server.APIHandler())
	f.metrics = httptest.NewServer(f.server.MetricsHandler())
	t.Cleanup(f.api.Close)
	t.Cleanup(f.metrics.Close)
	return f
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	var object map[string]any
	if err := json.Unmarshal([]byte(a.body), &object); err != nil {
		t.Fatalf("not a JSON object (%v): %s", err, a.body)
	}
	return object
}

func call(t *testing.T, method, url, body string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(data)}
}

func TestHealthAndUnknownRoutes(t *testing.T) {
	f := newFixture(t)
	health := call(t, "GET", f.api.URL+"/health", "")
	if health.status != 200 || strings.TrimSpace(health.body) != `{"status":"ok"}` ||
		!strings.HasPrefix(health.header.Get("Content-Type"), "application/json") {
		t.Fatalf("%+v", health)
	}
	if head := call(t, "HEAD", f.api.URL+"/health", ""); head.status != 200 || head.body != "" {
		t.Fatalf("HEAD: %+v", head)
	}
	for _, path := range []string{"/nope", "/health/", "/metrics", "/api/v1/audit/events/x"} {
		if got := call(t, "GET", f.api.URL+path, ""); got.status != 404 || strings.TrimSpace(got.body) != `{"error":"not found"}` {
			t.Fatalf("%s: %+v", path, got)
		}
	}
	wrong := call(t, "DELETE", f.api.URL+EventsPath, "")
	if wrong.status != 405 || wrong.header.Get("Allow") != "GET,HEAD,POST" {
		t.Fatalf("DELETE: %+v", wrong)
	}
	if got := call(t, "GET", f.metrics.URL+"/health", ""); got.status != 404 {
		t.Fatalf("metrics port /health: %+v", got)
	}
}

func TestReadinessNamesWhatIsMissing(t *testing.T) {
	f := newFixture(t)
	if ready := call(t, "GET", f.api.URL+"/health/ready", ""); ready.status != 200 || strings.TrimSpace(ready.body) != `{"status":"ready"}` {
		t.Fatalf("%+v", ready)
	}

	f.store.missing = []string{"audit_events", "audit_retention_policies"}
	both := call(t, "GET", f.api.URL+"/health/ready", "")
	want := map[string]any{"status": "not ready",
		"reason":         "tables audit_events, audit_retention_policies do not exist: run the migrations",
		"missing_tables": []any{"audit_events", "audit_retention_policies"}}
	if both.status != 503 || !reflect.DeepEqual(both.json(t), want) {
		t.Fatalf("%+v", both)
	}

	f.store.missing = []string{"audit_events"}
	one := call(t, "GET", f.api.URL+"/health/ready", "")
	want = map[string]any{"status": "not ready",
		"reason":         "table audit_events does not exist: run the migrations",
		"missing_tables": []any{"audit_events"}}
	if one.status != 503 || !reflect.DeepEqual(one.json(t), want) {
		t.Fatalf("%+v", one)
	}

	f.store.missing = nil
	f.store.err = &DBError{Kind: Unavailable, Detail: "connecting to x: refused"}
	down := call(t, "GET", f.api.URL+"/health/ready", "")
	want = map[string]any{"status": "not ready", "reason": "database unavailable: connecting to x: refused"}
	if down.status != 503 || !reflect.DeepEqual(down.json(t), want) {
		t.Fatalf("%+v", down)
	}
}

func TestReadinessNeedsRedisWhenConfigured(t *testing.T) {
	f := newFixture(t)
	redis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.server.RedisAddr = redis.Addr().String()
	if ready := call(t, "GET", f.api.URL+"/health/ready", ""); ready.status != 200 {
		t.Fatalf("%+v", ready)
	}
	redis.Close()
	f.store.missing = []string{"audit_events"}
	down := call(t, "GET", f.api.URL+"/health/ready", "")
	reason, _ := down.json(t)["reason"].(string)
	parts := strings.Split(reason, "; ")
	if down.status != 503 || len(parts) != 2 || !strings.HasPrefix(parts[0], "table audit_events") ||
		!strings.HasPrefix(parts[1], "redis at "+f.server.RedisAddr+" unreachable: ") {
		t.Fatalf("%+v", down)
	}
}

func TestEventsAreValidatedWrittenAndListed(t *testing.T) {
	f := newFixture(t)
	url := f.api.URL + EventsPath
	for _, c := range []struct{ body, field string }{
		{`{"correlation_id":"c"}`, "event_type"},
		{`{"event_type":"t","correlation_id":5}`, "correlation_id"},
		{`{"event_type":"t","correlation_id":"c","event_outcome":"maybe"}`, "event_outcome"},
		{`{not json`, "body"},
		{``, "body"},
	} {
		got := call(t, "POST", url, c.body)
		if got.status != 400 || got.json(t)["field"] != c.field || got.json(t)["error"] == "" {
			t.Fatalf("%s: %+v", c.body, got)
		}
	}
	if got := call(t, "POST", url, `{"event_type":"`+strings.Repeat("x", maxBody)+`"}`); got.status != 413 {
		t.Fatalf("a huge body: %d %.200s", got.status, got.body)
	}
	if len(f.store.events) != 0 {
		t.Fatalf("refused events were written: %+v", f.store.events)
	}

	created := call(t, "POST", url, `{"event_type":"a","correlation_id":"c1","event_data":{"b":[1,2.50,"<x>"],"a":null}}`)
	if created.status != 201 || created.json(t)["event_id"] == "" {
		t.Fatalf("%+v", created)
	}
	call(t, "POST", url, `{"event_type":"b","correlation_id":"c2"}`)
	if string(f.store.events[0].EventData) != `{"b":[1,2.50,"<x>"],"a":null}` {
		t.Fatalf("event_data not passed as written: %s", f.store.events[0].EventData)
	}

	listed := call(t, "GET", url+"?correlation_id=c1&limit=+5", "")
	var body struct {
		Data       []map[string]any `json:"data"`
		Pagination map[string]int64 `json:"pagination"`
	}
	if err := json.Unmarshal([]byte(listed.body), &body); err != nil || listed.status != 200 {
		t.Fatalf("%+v %v", listed, err)
	}
	if !reflect.DeepEqual(body.Pagination, map[string]int64{"limit": 5, "total": 1}) || len(body.Data) != 1 {
		t.Fatalf("%s", listed.body)
	}
	if !strings.Contains(listed.body, `"event_data":{"a":null,"b":[1,2.50,"<x>"]}`) ||
		!strings.Contains(listed.body, `"event_category":null`) {
		t.Fatalf("event fields: %s", listed.body)
	}
	none := call(t, "GET", url+"?correlation_id=unknown", "")
	if strings.TrimSpace(none.body) != `{"data":[],"pagination":{"limit":50,"total":0}}` {
		t.Fatalf("%+v", none)
	}
	if bad := call(t, "GET", url+"?limit=0", ""); bad.status != 400 || bad.json(t)["field"] != "limit" {
		t.Fatalf("%+v", bad)
	}

	f.store.err = &DBError{Kind: MissingSchema, Detail: `relation "audit_events" does not exist`}
	early := call(t, "POST", url, `{"event_type":"t","correlation_id":"c"}`)
	if early.status != 503 || early.json(t)["error"] != `relation "audit_events" does not exist: run the migrations` {
		t.Fatalf("%+v", early)
	}
	f.store.err = &DBError{Kind: QueryFailed, Detail: "value too long"}
	if failed := call(t, "GET", url, ""); failed.status != 500 || failed.json(t)["error"] != "database error: value too long" {
		t.Fatalf("%+v", failed)
	}
}

func TestMetricsCountRequestsByRouteAndStatus(t *testing.T) {
	f := newFixture(t)
	call(t, "GET", f.api.URL+"/health", "")
	call(t, "GET", f.api.URL+"/health", "")
	call(t, "POST", f.api.URL+EventsPath, `{}`)
	call(t, "POST", f.api.URL+EventsPath, `{"event_type":"t","correlation_id":"c"}`)
	call(t, "GET", f.api.URL+"/nowhere/"+`a"b`, "")

	metrics := call(t, "GET", f.metrics.URL+"/metrics", "")
	if metrics.status != 200 || !strings.HasPrefix(metrics.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("%+v", metrics)
	}
	for _, line := range []string{
		"# TYPE datastorage_http_requests_total counter\n",
		`datastorage_http_requests_total{method="GET",path="/health",status="200"} 2` + "\n",
		`datastorage_http_requests_total{method="POST",path="/api/v1/audit/events",status="400"} 1` + "\n",
		`datastorage_http_requests_total{method="POST",path="/api/v1/audit/events",status="201"} 1` + "\n",
		`datastorage_http_requests_total{method="GET",path="unmatched",status="404"} 1` + "\n",
		"datastorage_audit_events_written_total 1\n",
		"# TYPE datastorage_db_connected gauge\n",
		"datastorage_db_connected 1\n",
	} {
		if !strings.Contains(metrics.body, line) {
			t.Fatalf("no %q in:\n%s", line, metrics.body)
		}
	}
	// The metrics port is logged, not counted.
	call(t, "GET", f.metrics.URL+"/metrics", "")
	if strings.Contains(call(t, "GET", f.metrics.URL+"/metrics", "").body, `path="/metrics"`) {
		t.Fatal("metrics requests were counted")
	}
	f.store.err = &DBError{Kind: Unavailable, Detail: "down"}
	if !strings.Contains(call(t, "GET", f.metrics.URL+"/metrics", "").body, "datastorage_db_connected 0\n") {
		t.Fatal("the gauge did not follow the database")
	}

	var logged []map[string]any
	for _, line := range f.logs.lines() {
		if line["msg"] == "request" {
			logged = append(logged, line)
		}
	}
	if len(logged) != 9 {
		t.Fatalf("%d request lines: %v", len(logged), logged)
	}
	first := logged[0]
	if first["method"] != "GET" || first["path"] != "/health" || first["status"] != float64(200) {
		t.Fatalf("%v", first)
	}
	if _, ok := first["duration_ms"].(float64); !ok {
		t.Fatalf("no duration_ms: %v", first)
	}
	if logged[len(logged)-1]["path"] != "/metrics" {
		t.Fatalf("%v", logged[len(logged)-1])
	}
}

func TestLabelValuesAreEscaped(t *testing.T) {
	if got := escapeLabel("a\"b\\c\nd"); got != `a\"b\\c\nd` {
		t.Fatal(got)
	}
}
