package datastorage

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func parseEvent(t *testing.T, value any) (*NewEvent, *ValidationError) {
	t.Helper()
	body, err := json.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	return ParseNewEvent(body)
}

func mustParseEvent(t *testing.T, value any) *NewEvent {
	t.Helper()
	event, verr := parseEvent(t, value)
	if verr != nil {
		t.Fatalf("%+v", verr)
	}
	return event
}

func refused(t *testing.T, value any) *ValidationError {
	t.Helper()
	event, verr := parseEvent(t, value)
	if verr == nil {
		t.Fatalf("accepted: %+v", event)
	}
	return verr
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func sameJSON(t *testing.T, got json.RawMessage, want any) {
	t.Helper()
	var g, w any
	wantBytes, _ := json.Marshal(want)
	if json.Unmarshal(got, &g) != nil || json.Unmarshal(wantBytes, &w) != nil || !reflect.DeepEqual(g, w) {
		t.Fatalf("got %s, want %s", got, wantBytes)
	}
}

func TestAFullEventIsAccepted(t *testing.T) {
	event := mustParseEvent(t, map[string]any{
		"event_type":     " gateway.signal.received ",
		"event_category": "gateway",
		"event_action":   "received",
		"event_outcome":  "success",
		"correlation_id": "rr-2025-001",
		"actor_id":       "gateway-service",
		"resource_type":  "Signal",
		"resource_id":    "fp-abc",
		"event_data":     map[string]any{"alert": "HighMemory", "count": 3},
		"unknown_field":  "ignored",
	})
	if event.EventType != "gateway.signal.received" || deref(event.EventOutcome) != "success" ||
		event.CorrelationID != "rr-2025-001" || deref(event.ResourceID) != "fp-abc" ||
		deref(event.EventCategory) != "gateway" || deref(event.ActorID) != "gateway-service" {
		t.Fatalf("%+v", event)
	}
	sameJSON(t, event.EventData, map[string]any{"alert": "HighMemory", "count": 3})
}

func TestAMinimalEventGetsDefaults(t *testing.T) {
	event := mustParseEvent(t, map[string]any{"event_type": "t", "correlation_id": "c", "event_category": "  "})
	if event.EventCategory != nil || event.EventOutcome != nil || event.ActorID != nil {
		t.Fatalf("%+v", event)
	}
	if string(event.EventData) != "{}" {
		t.Fatalf("event_data %s", event.EventData)
	}
	event = mustParseEvent(t, map[string]any{"event_type": "t", "correlation_id": "c", "event_data": nil})
	if string(event.EventData) != "{}" {
		t.Fatalf("null event_data: %s", event.EventData)
	}
}

func TestEventDataMayBeAnyJSON(t *testing.T) {
	for _, data := range []any{[]any{1, 2}, "text", 42, true} {
		event := mustParseEvent(t, map[string]any{"event_type": "t", "correlation_id": "c", "event_data": data})
		sameJSON(t, event.EventData, data)
	}
}

func TestRequiredFieldsAreNamed(t *testing.T) {
	verr := refused(t, map[string]any{"correlation_id": "c"})
	if verr.Field != "event_type" || verr.Message != "event_type is required" {
		t.Fatalf("%+v", verr)
	}
	if verr := refused(t, map[string]any{"event_type": "t", "correlation_id": "  "}); verr.Field != "correlation_id" {
		t.Fatalf("%+v", verr)
	}
	if verr := refused(t, map[string]any{"event_type": nil, "correlation_id": "c"}); verr.Field != "event_type" {
		t.Fatalf("%+v", verr)
	}
}

func TestWrongTypesAndLengthsAreNamed(t *testing.T) {
	verr := refused(t, map[string]any{"event_type": 7, "correlation_id": "c"})
	if verr.Field != "event_type" || !strings.Contains(verr.Message, "must be a string") {
		t.Fatalf("%+v", verr)
	}
	if verr := refused(t, map[string]any{"event_type": "t", "correlation_id": "c", "actor_id": map[string]any{}}); verr.Field != "actor_id" {
		t.Fatalf("%+v", verr)
	}
	long := strings.Repeat("x", MaxTextLen+1)
	verr = refused(t, map[string]any{"event_type": "t", "correlation_id": "c", "resource_id": long})
	if verr.Field != "resource_id" || verr.Message != "resource_id is longer than 255 characters" {
		t.Fatalf("%+v", verr)
	}
	// Characters, not bytes.
	mustParseEvent(t, map[string]any{"event_type": strings.Repeat("é", MaxTextLen), "correlation_id": "c"})
}

func TestOutcomeMustBeKnown(t *testing.T) {
	verr := refused(t, map[string]any{"event_type": "t", "correlation_id": "c", "event_outcome": "ok"})
	if verr.Field != "event_outcome" || !strings.Contains(verr.Message, "success, failure, pending") {
		t.Fatalf("%+v", verr)
	}
	for _, outcome := range Outcomes {
		mustParseEvent(t, map[string]any{"event_type": "t", "correlation_id": "c", "event_outcome": outcome})
	}
}

func TestTheBodyMustBeAJSONObject(t *testing.T) {
	for _, body := range []string{"not json", "", `["event_type"]`, `"text"`, `{"event_type":"t"} trailing`, "{\"event_type\":\"\xff\"}"} {
		event, verr := ParseNewEvent([]byte(body))
		if verr == nil || verr.Field != "body" {
			t.Fatalf("%q: %+v %+v", body, event, verr)
		}
	}
}

func TestListQueryDefaultsAndFilters(t *testing.T) {
	query, verr := ParseListQuery(map[string]string{})
	if verr != nil || query.CorrelationID != nil || query.EventType != nil || query.Limit != DefaultLimit {
		t.Fatalf("%+v %+v", query, verr)
	}
	query, verr = ParseListQuery(map[string]string{"correlation_id": "c1", "event_type": "", "limit": "1000"})
	if verr != nil || deref(query.CorrelationID) != "c1" || query.EventType != nil || query.Limit != 1000 {
		t.Fatalf("%+v %+v", query, verr)
	}
}

func TestListLimitIsBounded(t *testing.T) {
	for _, bad := range []string{"0", "-3", "1001", "ten", "1.5"} {
		_, verr := ParseListQuery(map[string]string{"limit": bad})
		if verr == nil || verr.Field != "limit" || !strings.Contains(verr.Message, "`"+bad+"`") {
			t.Fatalf("%q: %+v", bad, verr)
		}
	}
}

func TestQueryParamsDecodeLeniently(t *testing.T) {
	got := QueryParams("correlation_id=rr%2D1&event_type=a+b&limit=%zz&limit=7&flag&=x&bad=%ff")
	want := map[string]string{"correlation_id": "rr-1", "event_type": "a b", "limit": "7", "flag": "", "": "x", "bad": "\uFFFD"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := QueryParams("limit=%zz"); got["limit"] != "%zz" {
		t.Fatalf("%q", got)
	}
}
