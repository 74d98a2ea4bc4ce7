package datastorage

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

var base = map[string]string{
	"DB_HOST": "postgresql",
	"DB_NAME": "action_history",
	"DB_USER": "slm_user",
}

// parse reads base with extra on top; a "-" value removes the variable.
func parse(extra map[string]string) (Config, error) {
	vars := map[string]string{}
	for k, v := range base {
		vars[k] = v
	}
	for k, v := range extra {
		if v == "-" {
			delete(vars, k)
		} else {
			vars[k] = v
		}
	}
	return ConfigFromLookup(func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	})
}

func configError(t *testing.T, err error) *ConfigError {
	t.Helper()
	var cerr *ConfigError
	if !errors.As(err, &cerr) {
		t.Fatalf("want a ConfigError, got %v", err)
	}
	return cerr
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Port: 8080, MetricsPort: 9181, DB: DBConfig{
		Host: "postgresql", Port: 5432, Name: "action_history", User: "slm_user", Password: "", SSLMode: "disable"}}
	if cfg != want {
		t.Fatalf("got %+v, want %+v", cfg, want)
	}
}

func TestConfigReadsEveryVariable(t *testing.T) {
	cfg, err := parse(map[string]string{
		"DATASTORAGE_PORT": "18080",
		"METRICS_PORT":     "19181",
		"DB_PORT":          " 15432 ",
		"DB_PASSWORD":      " s3cret ",
		"DB_SSLMODE":       "disable",
		"REDIS_ADDR":       "redis.kubernaut-system.svc:6379",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 18080 || cfg.MetricsPort != 19181 || cfg.DB.Port != 15432 {
		t.Fatalf("ports: %+v", cfg)
	}
	if cfg.DB.Password != " s3cret " {
		t.Fatalf("the password is not verbatim: %q", cfg.DB.Password)
	}
	if cfg.RedisAddr != "redis.kubernaut-system.svc:6379" {
		t.Fatalf("redis: %q", cfg.RedisAddr)
	}
}

func TestConfigNamesRequiredVariables(t *testing.T) {
	for _, name := range []string{"DB_HOST", "DB_NAME", "DB_USER"} {
		// Unset, and set to blanks: an empty value is no value.
		for _, value := range []string{"-", "  "} {
			_, err := parse(map[string]string{name: value})
			cerr := configError(t, err)
			if cerr.Var != name || err.Error() != name+": is required" {
				t.Fatalf("%s=%q: %v", name, value, err)
			}
		}
	}
}

func TestConfigRejectsBadPorts(t *testing.T) {
	for _, name := range []string{"DATASTORAGE_PORT", "METRICS_PORT", "DB_PORT"} {
		for _, value := range []string{"0", "65536", "http", "-1", "++1"} {
			_, err := parse(map[string]string{name: value})
			if cerr := configError(t, err); cerr.Var != name || !strings.Contains(cerr.Reason, "not a port number") {
				t.Fatalf("%s=%q: %v", name, value, err)
			}
		}
	}
	if cfg, err := parse(map[string]string{"DB_PORT": "+5433"}); err != nil || cfg.DB.Port != 5433 {
		t.Fatalf("+5433: %+v %v", cfg, err)
	}
}

func TestConfigSupportsOnlySSLModeDisable(t *testing.T) {
	_, err := parse(map[string]string{"DB_SSLMODE": "require"})
	if cerr := configError(t, err); cerr.Var != "DB_SSLMODE" || !strings.Contains(cerr.Reason, "require") {
		t.Fatal(err)
	}
}

func TestConfigWantsRedisAddrAsHostPort(t *testing.T) {
	for _, value := range []string{"redis", ":6379", "redis:", "redis:0", "redis:port"} {
		_, err := parse(map[string]string{"REDIS_ADDR": value})
		if cerr := configError(t, err); cerr.Var != "REDIS_ADDR" {
			t.Fatalf("%q: %v", value, err)
		}
	}
	cfg, err := parse(map[string]string{"REDIS_ADDR": "[::1]:6379"})
	if err != nil || cfg.RedisAddr != "[::1]:6379" {
		t.Fatalf("%+v %v", cfg, err)
	}
}

func TestConfigPrintedHidesThePassword(t *testing.T) {
	cfg, err := parse(map[string]string{"DB_PASSWORD": "hunter2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if text := fmt.Sprintf(verb, cfg); strings.Contains(text, "hunter2") || !strings.Contains(text, "postgresql") {
			t.Fatalf("%s: %s", verb, text)
		}
	}
	if target := cfg.DB.Target(); target != "slm_user@postgresql:5432/action_history" {
		t.Fatal(target)
	}
}
