package datastorage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	// MaxTextLen is the longest value accepted in a text field, in
	// characters (the columns are VARCHAR(255)).
	MaxTextLen = 255
	// DefaultLimit is a listing's limit when it names none.
	DefaultLimit = 50
	// MaxLimit is the largest limit a listing accepts.
	MaxLimit = 1000
)

// Outcomes are the values event_outcome may take.
var Outcomes = []string{"success", "failure", "pending"}

// NewEvent is a validated event, ready to be written. Optional fields are
// nil when absent.
type NewEvent struct {
	EventType     string
	EventCategory *string
	EventAction   *string
	EventOutcome  *string
	CorrelationID string
	ActorID       *string
	ResourceType  *string
	ResourceID    *string
	// EventData is any JSON; {} when absent or null.
	EventData json.RawMessage
}

// Event is a stored event, as listings return it (absent fields are null).
type Event struct {
	EventID        string  `json:"event_id"`
	EventTimestamp string  `json:"event_timestamp"`
	EventType      string  `json:"event_type"`
	EventCategory  *string `json:"event_category"`
	EventAction    *string `json:"event_action"`
	EventOutcome   *string `json:"event_outcome"`
	CorrelationID  string  `json:"correlation_id"`
	ActorID        *string `json:"actor_id"`
	ResourceType   *string `json:"resource_type"`
	ResourceID     *string `json:"resource_id"`
	EventData      any     `json:"event_data"`
}

// ValidationError is why a request was refused: the field at fault ("body"
// when the body itself is unusable) and what is wrong with it.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Message }

func invalidf(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// ParseNewEvent parses and validates the body of POST /api/v1/audit/events.
// Unknown fields are ignored.
func ParseNewEvent(body []byte) (*NewEvent, *ValidationError) {
	if !utf8.Valid(body) {
		return nil, invalidf("body", "body is not valid JSON: it is not UTF-8")
	}
	var value json.RawMessage
	if err := json.Unmarshal(body, &value); err != nil {
		return nil, invalidf("body", "body is not valid JSON: %v", err)
	}
	var object map[string]json.RawMessage
	if value = bytes.TrimLeft(value, " \t\r\n"); len(value) == 0 || value[0] != '{' {
		return nil, invalidf("body", "body must be a JSON object")
	}
	if err := json.Unmarshal(value, &object); err != nil {
		return nil, invalidf("body", "body is not valid JSON: %v", err)
	}

	event := &NewEvent{}
	var verr *ValidationError
	if event.EventOutcome, verr = optionalText(object, "event_outcome"); verr != nil {
		return nil, verr
	}
	if outcome := event.EventOutcome; outcome != nil && !contains(Outcomes, *outcome) {
		return nil, invalidf("event_outcome", "event_outcome must be one of %s, not `%s`", strings.Join(Outcomes, ", "), *outcome)
	}
	if event.EventType, verr = requiredText(object, "event_type"); verr != nil {
		return nil, verr
	}
	if event.EventCategory, verr = optionalText(object, "event_category"); verr != nil {
		return nil, verr
	}
	if event.EventAction, verr = optionalText(object, "event_action"); verr != nil {
		return nil, verr
	}
	if event.CorrelationID, verr = requiredText(object, "correlation_id"); verr != nil {
		return nil, verr
	}
	if event.ActorID, verr = optionalText(object, "actor_id"); verr != nil {
		return nil, verr
	}
	if event.ResourceType, verr = optionalText(object, "resource_type"); verr != nil {
		return nil, verr
	}
	if event.ResourceID, verr = optionalText(object, "resource_id"); verr != nil {
		return nil, verr
	}
	event.EventData = json.RawMessage("{}")
	if data, ok := object["event_data"]; ok && !isNull(data) {
		event.EventData = data
	}
	return event, nil
}

func requiredText(object map[string]json.RawMessage, field string) (string, *ValidationError) {
	text, err := optionalText(object, field)
	if err != nil {
		return "", err
	}
	if text == nil {
		return "", invalidf(field, "%s is required", field)
	}
	return *text, nil
}

// optionalText is the field's trimmed text: nil when absent, null or blank.
func optionalText(object map[string]json.RawMessage, field string) (*string, *ValidationError) {
	raw, ok := object[field]
	if !ok || isNull(raw) {
		return nil, nil
	}
	var text string
	if raw[0] != '"' || json.Unmarshal(raw, &text) != nil {
		return nil, invalidf(field, "%s must be a string", field)
	}
	text = strings.TrimSpace(text)
	switch {
	case text == "":
		return nil, nil
	case utf8.RuneCountInString(text) > MaxTextLen:
		return nil, invalidf(field, "%s is longer than %d characters", field, MaxTextLen)
	}
	return &text, nil
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

func contains(values []string, value string) bool {
	for _, v := range values {
		if v == value {
			return true
		}
	}
	return false
}

// ListQuery holds the filters of GET /api/v1/audit/events (nil: no filter).
type ListQuery struct {
	CorrelationID *string
	EventType     *string
	Limit         int64
}

// ParseListQuery validates the query string's parameters; empty (or blank)
// values count as absent.
func ParseListQuery(params map[string]string) (ListQuery, *ValidationError) {
	get := func(name string) *string {
		value := strings.TrimSpace(params[name])
		if value == "" {
			return nil
		}
		return &value
	}
	query := ListQuery{CorrelationID: get("correlation_id"), EventType: get("event_type"), Limit: DefaultLimit}
	if text := get("limit"); text != nil {
		n, err := strconv.ParseInt(*text, 10, 64)
		if err != nil || n < 1 || n > MaxLimit {
			return ListQuery{}, invalidf("limit", "limit must be an integer from 1 to %d, not `%s`", MaxLimit, *text)
		}
		query.Limit = n
	}
	return query, nil
}

// QueryParams decodes a raw query string leniently, as HTML forms are: `+`
// is a space, a malformed escape stays as written, bytes that are not UTF-8
// become U+FFFD, and a repeated name keeps its last value.
func QueryParams(raw string) map[string]string {
	params := map[string]string{}
	for _, pair := range strings.Split(raw, "&") {
		if pair == "" {
			continue
		}
		name, value, _ := strings.Cut(pair, "=")
		params[unescape(name)] = unescape(value)
	}
	return params
}

func unescape(text string) string {
	var out strings.Builder
	for i := 0; i < len(text); i++ {
		switch c := text[i]; {
		case c == '+':
			out.WriteByte(' ')
		case c == '%' && i+2 < len(text) && isHex(text[i+1]) && isHex(text[i+2]):
			n, _ := strconv.ParseUint(text[i+1:i+3], 16, 8)
			out.WriteByte(byte(n))
			i += 2
		default:
			out.WriteByte(c)
		}
	}
	return strings.ToValidUTF8(out.String(), "\uFFFD")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
