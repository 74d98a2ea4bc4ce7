// Package datastorage is the DataStorage service: audit events stored in
// PostgreSQL behind an HTTP API. The API port serves /health, /health/ready
// and /api/v1/audit/events; the metrics port serves /metrics. See the
// example's README for the configuration.
package datastorage

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Config is everything the service reads at start, from environment
// variables only (in Kubernetes they come from its ConfigMap and Secret).
type Config struct {
	// Port is DATASTORAGE_PORT: the API and health probes (default 8080).
	Port uint16
	// MetricsPort is METRICS_PORT: Prometheus metrics (default 9181).
	MetricsPort uint16
	DB          DBConfig
	// RedisAddr is REDIS_ADDR (host:port): when set, readiness also
	// requires a TCP connection to it. Empty when unset.
	RedisAddr string
}

// DBConfig are the connection settings of the PostgreSQL database. Printing
// it (any verb) hides the password.
type DBConfig struct {
	// Host is DB_HOST (required).
	Host string
	// Port is DB_PORT (default 5432).
	Port uint16
	// Name is DB_NAME (required).
	Name string
	// User is DB_USER (required).
	User string
	// Password is DB_PASSWORD (default empty).
	Password string
	// SSLMode is DB_SSLMODE: only "disable" (the default) is supported.
	SSLMode string
}

// Target names the database as user@host:port/name (no password).
func (c DBConfig) Target() string {
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Name)
}

// String shows every setting but the password.
func (c DBConfig) String() string {
	return fmt.Sprintf("{Host:%s Port:%d Name:%s User:%s Password:<redacted> SSLMode:%s}",
		c.Host, c.Port, c.Name, c.User, c.SSLMode)
}

// GoString is String, for %#v.
func (c DBConfig) GoString() string { return "datastorage.DBConfig" + c.String() }

// ConfigError is a variable that is missing or does not parse.
type ConfigError struct {
	Var    string
	Reason string
}

func (e *ConfigError) Error() string { return e.Var + ": " + e.Reason }

// ConfigFromEnv reads the process environment.
func ConfigFromEnv() (Config, error) {
	return ConfigFromLookup(os.LookupEnv)
}

// ConfigFromLookup reads the variables through lookup; an empty (or
// all-blank) value counts as unset, and values are trimmed, except the
// password, which is taken verbatim.
func ConfigFromLookup(lookup func(string) (string, bool)) (Config, error) {
	get := func(name string) (string, bool) {
		value, _ := lookup(name)
		value = strings.TrimSpace(value)
		return value, value != ""
	}
	required := func(name string) (string, error) {
		if value, ok := get(name); ok {
			return value, nil
		}
		return "", &ConfigError{Var: name, Reason: "is required"}
	}
	port := func(name string, fallback uint16) (uint16, error) {
		value, ok := get(name)
		if !ok {
			return fallback, nil
		}
		n, reason := parsePort(value)
		if reason != "" {
			return 0, &ConfigError{Var: name, Reason: reason}
		}
		return n, nil
	}

	sslmode, ok := get("DB_SSLMODE")
	if !ok {
		sslmode = "disable"
	}
	if sslmode != "disable" {
		return Config{}, &ConfigError{Var: "DB_SSLMODE", Reason: fmt.Sprintf("`%s` is not supported (only `disable`)", sslmode)}
	}
	redisAddr, _ := get("REDIS_ADDR")
	if redisAddr != "" {
		if reason := checkHostPort(redisAddr); reason != "" {
			return Config{}, &ConfigError{Var: "REDIS_ADDR", Reason: reason}
		}
	}

	var cfg Config
	var err error
	if cfg.Port, err = port("DATASTORAGE_PORT", 8080); err != nil {
		return Config{}, err
	}
	if cfg.MetricsPort, err = port("METRICS_PORT", 9181); err != nil {
		return Config{}, err
	}
	if cfg.DB.Host, err = required("DB_HOST"); err != nil {
		return Config{}, err
	}
	if cfg.DB.Port, err = port("DB_PORT", 5432); err != nil {
		return Config{}, err
	}
	if cfg.DB.Name, err = required("DB_NAME"); err != nil {
		return Config{}, err
	}
	if cfg.DB.User, err = required("DB_USER"); err != nil {
		return Config{}, err
	}
	// A secret is taken verbatim: only an unset variable is empty.
	cfg.DB.Password, _ = lookup("DB_PASSWORD")
	cfg.DB.SSLMode = sslmode
	cfg.RedisAddr = redisAddr
	return cfg, nil
}

// parsePort is the port number in value (1-65535, an optional leading +),
// or the reason it is not one.
func parsePort(value string) (uint16, string) {
	n, err := strconv.ParseUint(strings.TrimPrefix(value, "+"), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Sprintf("`%s` is not a port number (1-65535)", value)
	}
	return uint16(n), ""
}

// checkHostPort is the reason addr is not host:port, or "".
func checkHostPort(addr string) string {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return fmt.Sprintf("`%s` is not host:port", addr)
	}
	if i == 0 {
		return fmt.Sprintf("`%s` has no host", addr)
	}
	_, reason := parsePort(addr[i+1:])
	return reason
}
