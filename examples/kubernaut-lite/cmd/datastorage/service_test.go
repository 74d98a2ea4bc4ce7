package main

// The real datastorage binary against a real PostgreSQL server.

import (
	"encoding/json"
	"net"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

const events = "/api/v1/audit/events"

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// asJSON is value as a decoded JSON value, to compare with answers.
func asJSON(t *testing.T, value any) any {
	t.Helper()
	data, err := json.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func sameAs(t *testing.T, what string, got, want any) {
	t.Helper()
	if g, w := asJSON(t, got), asJSON(t, want); !reflect.DeepEqual(g, w) {
		t.Fatalf("%s: got %v, want %v", what, g, w)
	}
}

func TestBinaryIsReadyOnlyAfterMigrationsAndRoundTripsEvents(t *testing.T) {
	pg := startPGWithAppDB(t)
	svc := spawnService(t, pg.serviceEnv("127.0.0.1"))
	svc.waitHealthy()

	health := get(t, svc.port, "/health")
	if health.status != 200 || !strings.Contains(health.header.Get("Content-Type"), "application/json") {
		t.Fatalf("%+v", health)
	}
	sameAs(t, "/health", health.json(t), map[string]any{"status": "ok"})

	// The database answers, but the schema is not there yet.
	notReady := waitUntil(t, svc.port, "/health/ready", 10*time.Second, func(r response) bool {
		return !strings.Contains(r.body, "database unavailable")
	})
	if notReady.status != 503 {
		t.Fatalf("%+v", notReady)
	}
	sameAs(t, "not ready", notReady.json(t), map[string]any{
		"status":         "not ready",
		"reason":         "tables audit_events, audit_retention_policies do not exist: run the migrations",
		"missing_tables": []string{"audit_events", "audit_retention_policies"},
	})
	// Writes fail the same way, without taking the service down.
	early := post(t, svc.port, events, map[string]any{"event_type": "t", "correlation_id": "c"})
	if early.status != 503 || !strings.Contains(str(early.json(t), "error"), "run the migrations") {
		t.Fatalf("%+v", early)
	}

	// Half the schema is still not ready: the reason names what is missing.
	migrations, err := loadMigrations(migrationsDir(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := applyMigrations(pg.appConn(), migrations[:1]); err != nil {
		t.Fatal(err)
	}
	partial := get(t, svc.port, "/health/ready")
	if partial.status != 503 || str(partial.json(t), "reason") != "table audit_retention_policies does not exist: run the migrations" {
		t.Fatalf("%+v", partial)
	}

	pg.migrate()
	ready := get(t, svc.port, "/health/ready")
	if ready.status != 200 {
		t.Fatalf("%+v", ready)
	}
	sameAs(t, "ready", ready.json(t), map[string]any{"status": "ready"})

	// Round trip: two events under one correlation id, one under another.
	first := map[string]any{
		"event_type":     "gateway.signal.received",
		"event_category": "gateway",
		"event_action":   "received",
		"event_outcome":  "success",
		"correlation_id": "rr-001",
		"actor_id":       "gateway-service",
		"resource_type":  "Signal",
		"resource_id":    "fp-1",
		"event_data":     map[string]any{"alert": "HighMemory", "labels": map[string]any{"ns": "prod"}, "count": 3},
	}
	second := map[string]any{"event_type": "remediation.started", "correlation_id": "rr-001", "event_data": []any{1, "two", nil}}
	other := map[string]any{"event_type": "gateway.signal.received", "correlation_id": "rr-002"}
	var ids []string
	for _, event := range []map[string]any{first, second, other} {
		created := post(t, svc.port, events, event)
		id := str(created.json(t), "event_id")
		if created.status != 201 || !uuidPattern.MatchString(id) {
			t.Fatalf("%+v", created)
		}
		ids = append(ids, id)
	}
	if ids[0] == ids[1] {
		t.Fatalf("one id twice: %q", ids)
	}

	listed := get(t, svc.port, events+"?correlation_id=rr-001")
	if listed.status != 200 {
		t.Fatalf("%+v", listed)
	}
	body := listed.json(t)
	sameAs(t, "pagination", body["pagination"], map[string]any{"limit": 50, "total": 2})
	data, _ := body["data"].([]any)
	if len(data) != 2 {
		t.Fatalf("%s", listed.body)
	}
	newest, oldest := data[0].(map[string]any), data[1].(map[string]any)
	// Newest first.
	if newest["event_id"] != ids[1] || oldest["event_id"] != ids[0] {
		t.Fatalf("order: %s", listed.body)
	}
	sameAs(t, "event_data", newest["event_data"], []any{1, "two", nil})
	if v, ok := newest["event_category"]; !ok || v != nil {
		t.Fatalf("event_category should be null: %s", listed.body)
	}
	for _, field := range []string{"event_type", "event_category", "event_action", "event_outcome",
		"correlation_id", "actor_id", "resource_type", "resource_id", "event_data"} {
		sameAs(t, field, oldest[field], first[field])
	}
	stamp := str(oldest, "event_timestamp")
	if !strings.HasSuffix(stamp, "Z") || !strings.Contains(stamp, "T") || str(newest, "event_timestamp") <= stamp {
		t.Fatalf("timestamps %q, %q", stamp, newest["event_timestamp"])
	}

	limited := get(t, svc.port, events+"?correlation_id=rr-001&limit=1").json(t)
	sameAs(t, "limited", limited["pagination"], map[string]any{"limit": 1, "total": 2})
	if d, _ := limited["data"].([]any); len(d) != 1 || d[0].(map[string]any)["event_id"] != ids[1] {
		t.Fatalf("%v", limited)
	}
	byType := get(t, svc.port, events+"?correlation_id=rr-001&event_type=gateway.signal.received").json(t)
	if d, _ := byType["data"].([]any); len(d) != 1 || d[0].(map[string]any)["event_id"] != ids[0] {
		t.Fatalf("%v", byType)
	}
	sameAs(t, "by type", byType["pagination"].(map[string]any)["total"], 1)
	sameAs(t, "all", get(t, svc.port, events).json(t)["pagination"].(map[string]any)["total"], 3)
	sameAs(t, "none", get(t, svc.port, events+"?correlation_id=unknown").json(t),
		map[string]any{"data": []any{}, "pagination": map[string]any{"limit": 50, "total": 0}})

	// Bad requests name the field.
	missing := post(t, svc.port, events, map[string]any{"correlation_id": "rr-003"})
	if missing.status != 400 || str(missing.json(t), "field") != "event_type" || !strings.Contains(str(missing.json(t), "error"), "event_type") {
		t.Fatalf("%+v", missing)
	}
	wrong := post(t, svc.port, events, map[string]any{"event_type": "t", "correlation_id": 5})
	if wrong.status != 400 || str(wrong.json(t), "field") != "correlation_id" {
		t.Fatalf("%+v", wrong)
	}
	garbage, err := request("POST", svc.port, events, "{not json")
	if err != nil || garbage.status != 400 || str(garbage.json(t), "field") != "body" {
		t.Fatalf("%+v %v", garbage, err)
	}
	badLimit := get(t, svc.port, events+"?limit=0")
	if badLimit.status != 400 || str(badLimit.json(t), "field") != "limit" {
		t.Fatalf("%+v", badLimit)
	}
	sameAs(t, "total after refusals", get(t, svc.port, events).json(t)["pagination"].(map[string]any)["total"], 3)

	// Metrics on their own port.
	metrics := get(t, svc.metricsPort, "/metrics")
	if metrics.status != 200 || !strings.HasPrefix(metrics.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("%+v", metrics)
	}
	for _, line := range []string{
		"datastorage_audit_events_written_total 3\n",
		`datastorage_http_requests_total{method="POST",path="/api/v1/audit/events",status="201"} 3` + "\n",
		`datastorage_http_requests_total{method="POST",path="/api/v1/audit/events",status="400"} 3` + "\n",
		"datastorage_db_connected 1\n",
	} {
		if !strings.Contains(metrics.body, line) {
			t.Fatalf("no %q in:\n%s", line, metrics.body)
		}
	}
	if got := get(t, svc.port, "/metrics"); got.status != 404 {
		t.Fatalf("/metrics on the API port: %+v", got)
	}

	// One log line per request, JSON, on stdout. The last request's line may
	// still be on its way through the pipe: wait for it, bounded.
	var requests []map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for {
		requests = requests[:0]
		sawMetrics := false
		for _, line := range svc.logLines() {
			if line["msg"] == "request" {
				requests = append(requests, line)
				sawMetrics = sawMetrics || line["path"] == "/metrics"
			}
		}
		if sawMetrics || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	refusedLogged, metricsLogged := false, false
	for _, r := range requests {
		refusedLogged = refusedLogged || r["path"] == events && r["method"] == "POST" && r["status"] == float64(400)
		metricsLogged = metricsLogged || r["path"] == "/metrics"
	}
	if !refusedLogged || !metricsLogged {
		t.Fatalf("request lines: %v", requests)
	}

	// SIGTERM: a clean exit.
	if code := svc.terminate(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, svc.output())
	}
	output := svc.output()
	if !strings.Contains(output, `"signal":"SIGTERM"`) || !strings.Contains(output, `"msg":"stopped"`) {
		t.Fatalf("output:\n%s", output)
	}
}

func TestBinaryWaitsForTheDatabaseAndSurvivesAnOutage(t *testing.T) {
	pg, why := initPG(t)
	if pg == nil {
		skipOrFail(t, why)
	}
	// The service starts first, as a pod may before PostgreSQL.
	svc := spawnService(t, pg.serviceEnv("127.0.0.1"))
	svc.waitHealthy()
	down := get(t, svc.port, "/health/ready")
	if down.status != 503 || !strings.HasPrefix(str(down.json(t), "reason"), "database unavailable") {
		t.Fatalf("%+v", down)
	}
	if got := get(t, svc.port, "/health"); got.status != 200 {
		t.Fatalf("%+v", got)
	}

	pg.start()
	pg.createAppDB()
	pg.migrate()
	waitForStatus(t, svc.port, "/health/ready", 200, 15*time.Second)
	if created := post(t, svc.port, events, map[string]any{"event_type": "a", "correlation_id": "out"}); created.status != 201 {
		t.Fatalf("%+v", created)
	}

	// Outage: readiness says so, liveness does not, the process stays up.
	pg.stop()
	during := waitForStatus(t, svc.port, "/health/ready", 503, 15*time.Second)
	if !strings.HasPrefix(str(during.json(t), "reason"), "database unavailable") {
		t.Fatalf("%+v", during)
	}
	if got := get(t, svc.port, "/health"); got.status != 200 {
		t.Fatalf("%+v", got)
	}
	if refused := post(t, svc.port, events, map[string]any{"event_type": "b", "correlation_id": "out"}); refused.status != 503 {
		t.Fatalf("%+v", refused)
	}
	if metrics := get(t, svc.metricsPort, "/metrics"); !strings.Contains(metrics.body, "datastorage_db_connected 0\n") {
		t.Fatalf("%s", metrics.body)
	}
	if svc.proc.exited() {
		t.Fatal("datastorage exited during the outage")
	}

	pg.start()
	waitForStatus(t, svc.port, "/health/ready", 200, 15*time.Second)
	if created := post(t, svc.port, events, map[string]any{"event_type": "c", "correlation_id": "out"}); created.status != 201 {
		t.Fatalf("%+v", created)
	}
	listed := get(t, svc.port, events+"?correlation_id=out").json(t)
	sameAs(t, "total", listed["pagination"].(map[string]any)["total"], 2)
	if d, _ := listed["data"].([]any); len(d) == 0 || d[0].(map[string]any)["event_type"] != "c" {
		t.Fatalf("%v", listed)
	}
	if output := svc.output(); !strings.Contains(output, "database connection lost") || !strings.Contains(output, "database connected") {
		t.Fatalf("the outage was not logged:\n%s", output)
	}
	if metrics := get(t, svc.metricsPort, "/metrics"); !strings.Contains(metrics.body, "datastorage_db_connected 1\n") {
		t.Fatalf("after the outage:\n%s", metrics.body)
	}
}

func TestRedisAddrGatesReadiness(t *testing.T) {
	pg := startPGWithAppDB(t)
	pg.migrate()
	redis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	redisAddr := redis.Addr().String()
	svc := spawnService(t, append(pg.serviceEnv("127.0.0.1"), "REDIS_ADDR="+redisAddr))
	svc.waitHealthy()
	waitForStatus(t, svc.port, "/health/ready", 200, 10*time.Second)

	redis.Close()
	notReady := get(t, svc.port, "/health/ready")
	if notReady.status != 503 || !strings.HasPrefix(str(notReady.json(t), "reason"), "redis at "+redisAddr+" unreachable") {
		t.Fatalf("%+v", notReady)
	}
}

func TestBinaryRefusesAnIncompleteConfiguration(t *testing.T) {
	svc := spawnService(t, []string{"DB_NAME=action_history", "DB_USER=slm_user"})
	if code := svc.waitExit(10 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2:\n%s", code, svc.output())
	}
	if output := svc.output(); !strings.Contains(output, "DB_HOST: is required") {
		t.Fatalf("output:\n%s", output)
	}
}
