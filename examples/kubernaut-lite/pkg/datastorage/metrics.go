package datastorage

import (
	"fmt"
	"net/http"
	"strings"

	"kubernaut-lite/pkg/service"
)

// Metric names, as served on METRICS_PORT.
const (
	RequestsMetric      = "datastorage_http_requests_total"
	EventsWrittenMetric = "datastorage_audit_events_written_total"
	ConnectedMetric     = "datastorage_db_connected"
)

// Metrics counts the API's requests and the events written.
type Metrics struct {
	counters *service.Counters
}

// NewMetrics declares the counters.
func NewMetrics() *Metrics {
	return &Metrics{counters: service.NewCounters(map[string]string{
		RequestsMetric:      "HTTP requests served on the API port.",
		EventsWrittenMetric: "Audit events written to the database.",
	})}
}

// RecordRequest counts one request to route (the route's path, or
// "unmatched") answered with status.
func (m *Metrics) RecordRequest(method, route string, status int) {
	m.counters.Inc(RequestsMetric, fmt.Sprintf(`method="%s",path="%s",status="%d"`,
		escapeLabel(method), escapeLabel(route), status))
}

// RecordEventWritten counts one event written.
func (m *Metrics) RecordEventWritten() { m.counters.Inc(EventsWrittenMetric, "") }

// Value is a counter's current value (tests).
func (m *Metrics) Value(name, labels string) float64 { return m.counters.Value(name, labels) }

// Handler serves the counters and the gauge datastorage_db_connected,
// sampled from connected, in the Prometheus text format.
func (m *Metrics) Handler(connected func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.counters.ServeHTTP(w, r)
		value := 0
		if connected() {
			value = 1
		}
		fmt.Fprintf(w, "# HELP %s Whether the database answered the last call.\n# TYPE %s gauge\n%s %d\n",
			ConnectedMetric, ConnectedMetric, ConnectedMetric, value)
	})
}

// escapeLabel escapes a label value (backslash, double quote, newline).
func escapeLabel(value string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(value)
}
