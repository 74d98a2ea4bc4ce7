//! Configuration, read from environment variables only (in Kubernetes they
//! come from the service's ConfigMap and Secret).

use std::fmt;

/// Everything the service reads at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `DATASTORAGE_PORT`: the API and health probes (default 8080).
    pub port: u16,
    /// `METRICS_PORT`: Prometheus metrics (default 9181).
    pub metrics_port: u16,
    pub db: DbConfig,
    /// `REDIS_ADDR` (`host:port`): when set, readiness also requires a TCP
    /// connection to it.
    pub redis_addr: Option<String>,
}

/// Connection settings of the PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// `DB_HOST` (required).
    pub host: String,
    /// `DB_PORT` (default 5432).
    pub port: u16,
    /// `DB_NAME` (required).
    pub name: String,
    /// `DB_USER` (required).
    pub user: String,
    /// `DB_PASSWORD` (default empty).
    pub password: String,
    /// `DB_SSLMODE`: only `disable` (the default) is supported.
    pub sslmode: String,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

/// A variable that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup`; an empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &'static str| {
            get(name).ok_or_else(|| ConfigError {
                var: name,
                reason: "is required".into(),
            })
        };
        let port = |name: &'static str, default: u16| match get(name) {
            None => Ok(default),
            Some(value) => parse_port(&value).map_err(|reason| ConfigError { var: name, reason }),
        };

        let sslmode = get("DB_SSLMODE").unwrap_or_else(|| "disable".into());
        if sslmode != "disable" {
            return Err(ConfigError {
                var: "DB_SSLMODE",
                reason: format!("`{sslmode}` is not supported (only `disable`)"),
            });
        }
        let redis_addr = match get("REDIS_ADDR") {
            None => None,
            Some(addr) => {
                check_host_port(&addr).map_err(|reason| ConfigError {
                    var: "REDIS_ADDR",
                    reason,
                })?;
                Some(addr)
            }
        };
        Ok(Config {
            port: port("DATASTORAGE_PORT", 8080)?,
            metrics_port: port("METRICS_PORT", 9181)?,
            db: DbConfig {
                host: required("DB_HOST")?,
                port: port("DB_PORT", 5432)?,
                name: required("DB_NAME")?,
                user: required("DB_USER")?,
                // Secrets are taken verbatim: only an unset variable is empty.
                password: lookup("DB_PASSWORD").unwrap_or_default(),
                sslmode,
            },
            redis_addr,
        })
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{value}` is not a port number (1-65535)")),
        Ok(port) => Ok(port),
    }
}

fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("`{addr}` is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("`{addr}` has no host"));
    }
    parse_port(port).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const BASE: [(&str, &str); 3] = [
        ("DB_HOST", "postgresql"),
        ("DB_NAME", "action_history"),
        ("DB_USER", "slm_user"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut vars = BASE.to_vec();
        vars.extend_from_slice(extra);
        vars
    }

    #[test]
    fn defaults() {
        let config = parse(&BASE).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.metrics_port, 9181);
        assert_eq!(config.db.host, "postgresql");
        assert_eq!(config.db.port, 5432);
        assert_eq!(config.db.name, "action_history");
        assert_eq!(config.db.user, "slm_user");
        assert_eq!(config.db.password, "");
        assert_eq!(config.db.sslmode, "disable");
        assert_eq!(config.redis_addr, None);
    }

    #[test]
    fn every_variable_is_read() {
        let config = parse(&with(&[
            ("DATASTORAGE_PORT", "18080"),
            ("METRICS_PORT", "19181"),
            ("DB_PORT", "15432"),
            ("DB_PASSWORD", " s3cret "),
            ("DB_SSLMODE", "disable"),
            ("REDIS_ADDR", "redis.kubernaut-system.svc:6379"),
        ]))
        .unwrap();
        assert_eq!(config.port, 18080);
        assert_eq!(config.metrics_port, 19181);
        assert_eq!(config.db.port, 15432);
        assert_eq!(config.db.password, " s3cret ");
        assert_eq!(
            config.redis_addr.as_deref(),
            Some("redis.kubernaut-system.svc:6379")
        );
    }

    #[test]
    fn required_variables_are_named() {
        for var in ["DB_HOST", "DB_NAME", "DB_USER"] {
            let vars: Vec<_> = BASE.iter().copied().filter(|(k, _)| *k != var).collect();
            let err = parse(&vars).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains("is required"), "{err}");
            // An empty value is no value.
            let mut vars = vars;
            vars.push((var, "  "));
            assert_eq!(parse(&vars).unwrap_err().var, var);
        }
    }

    #[test]
    fn bad_ports_are_rejected() {
        for var in ["DATASTORAGE_PORT", "METRICS_PORT", "DB_PORT"] {
            for value in ["0", "65536", "http", "-1"] {
                let err = parse(&with(&[(var, value)])).unwrap_err();
                assert_eq!(err.var, var, "{value}");
            }
        }
    }

    #[test]
    fn only_sslmode_disable_is_supported() {
        let err = parse(&with(&[("DB_SSLMODE", "require")])).unwrap_err();
        assert_eq!(err.var, "DB_SSLMODE");
        assert!(err.reason.contains("require"));
    }

    #[test]
    fn redis_addr_must_be_host_port() {
        for value in ["redis", ":6379", "redis:", "redis:0", "redis:port"] {
            let err = parse(&with(&[("REDIS_ADDR", value)])).unwrap_err();
            assert_eq!(err.var, "REDIS_ADDR", "{value}");
        }
        let config = parse(&with(&[("REDIS_ADDR", "[::1]:6379")])).unwrap();
        assert_eq!(config.redis_addr.as_deref(), Some("[::1]:6379"));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let config = parse(&with(&[("DB_PASSWORD", "hunter2")])).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
