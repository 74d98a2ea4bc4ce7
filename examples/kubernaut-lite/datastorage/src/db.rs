//! The PostgreSQL connection: opened lazily, reopened after it breaks, never
//! fatal. A request that needs the database while it is down gets an error
//! (and readiness reports it); the next request tries again.

use crate::config::DbConfig;
use crate::events::{Event, ListQuery, NewEvent};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Tables the migrations create; the service is ready only when all exist.
pub const REQUIRED_TABLES: [&str; 2] = ["audit_events", "audit_retention_policies"];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed attempt, callers get that failure back for this long
/// instead of each waiting on a new attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a database call failed.
#[derive(Debug)]
pub enum DbError {
    /// No connection could be made, or it broke.
    Unavailable(String),
    /// A table the service needs is missing: the migrations did not run.
    MissingSchema(String),
    /// Anything else PostgreSQL refused.
    Query(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Unavailable(e) => write!(f, "database unavailable: {e}"),
            DbError::MissingSchema(e) => write!(f, "{e}: run the migrations"),
            DbError::Query(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for DbError {}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        if let Some(db) = e.as_db_error() {
            if *db.code() == SqlState::UNDEFINED_TABLE {
                return DbError::MissingSchema(db.message().to_string());
            }
            return DbError::Query(db.message().to_string());
        }
        // Not an answer from the server: the connection is gone or unusable.
        DbError::Unavailable(e.to_string())
    }
}

/// What the readiness probe found in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    pub missing_tables: Vec<String>,
}

struct State {
    client: Option<Arc<Client>>,
    last_failure: Option<(Instant, String)>,
}

/// A shared, self-healing connection.
pub struct Db {
    config: tokio_postgres::Config,
    target: String,
    state: Mutex<State>,
}

impl Db {
    pub fn new(settings: &DbConfig) -> Db {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&settings.host)
            .port(settings.port)
            .dbname(&settings.name)
            .user(&settings.user)
            .password(settings.password.as_bytes())
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .application_name("datastorage")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        Db {
            config,
            target: format!(
                "{}@{}:{}/{}",
                settings.user, settings.host, settings.port, settings.name
            ),
            state: Mutex::new(State {
                client: None,
                last_failure: None,
            }),
        }
    }

    /// Whether a connection is open right now (for the metrics).
    pub async fn connected(&self) -> bool {
        let state = self.state.lock().await;
        state.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The open connection, or a new one.
    pub async fn client(&self) -> Result<Arc<Client>, DbError> {
        let mut state = self.state.lock().await;
        if let Some(client) = &state.client {
            if !client.is_closed() {
                return Ok(client.clone());
            }
            crate::log::event("database connection lost", &[("target", &self.target)]);
            state.client = None;
        }
        if let Some((at, reason)) = &state.last_failure
            && at.elapsed() < RETRY_AFTER
        {
            return Err(DbError::Unavailable(reason.clone()));
        }
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls)).await;
        let result = match attempt {
            Err(_) => Err(format!(
                "connecting to {} timed out after {CONNECT_TIMEOUT:?}",
                self.target
            )),
            Ok(Err(e)) => Err(format!("connecting to {}: {e}", self.target)),
            Ok(Ok((client, connection))) => {
                let target = self.target.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        crate::log::event(
                            "database connection closed",
                            &[("target", &target), ("error", &e.to_string())],
                        );
                    }
                });
                Ok(Arc::new(client))
            }
        };
        match result {
            Ok(client) => {
                crate::log::event("database connected", &[("target", &self.target)]);
                state.client = Some(client.clone());
                state.last_failure = None;
                Ok(client)
            }
            Err(reason) => {
                if state.last_failure.is_none() {
                    crate::log::event("database unavailable", &[("error", &reason)]);
                }
                state.last_failure = Some((Instant::now(), reason.clone()));
                Err(DbError::Unavailable(reason))
            }
        }
    }

    async fn timed<T>(
        &self,
        work: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        match tokio::time::timeout(QUERY_TIMEOUT, work).await {
            Ok(result) => result.map_err(DbError::from),
            Err(_) => Err(DbError::Unavailable(format!(
                "no answer within {QUERY_TIMEOUT:?}"
            ))),
        }
    }

    /// Checks that the database answers and has every required table.
    pub async fn schema_status(&self) -> Result<SchemaStatus, DbError> {
        let client = self.client().await?;
        let rows = self
            .timed(client.query(
                "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL ORDER BY t",
                &[&REQUIRED_TABLES.as_slice()],
            ))
            .await?;
        Ok(SchemaStatus {
            missing_tables: rows.iter().map(|row| row.get(0)).collect(),
        })
    }

    /// Writes one event and returns its id.
    pub async fn insert_event(&self, event: &NewEvent) -> Result<String, DbError> {
        let client = self.client().await?;
        let data = event.event_data.to_string();
        let row = self
            .timed(client.query_one(
                "INSERT INTO audit_events (event_type, event_category, event_action, \
                 event_outcome, correlation_id, actor_id, resource_type, resource_id, event_data) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::text::jsonb) \
                 RETURNING event_id::text",
                &[
                    &event.event_type,
                    &event.event_category,
                    &event.event_action,
                    &event.event_outcome,
                    &event.correlation_id,
                    &event.actor_id,
                    &event.resource_type,
                    &event.resource_id,
                    &data,
                ],
            ))
            .await?;
        Ok(row.get(0))
    }

    /// The events matching `query`, newest first, and how many match in all.
    pub async fn list_events(&self, query: &ListQuery) -> Result<(Vec<Event>, i64), DbError> {
        let client = self.client().await?;
        const FILTER: &str = "($1::text IS NULL OR correlation_id = $1) \
                              AND ($2::text IS NULL OR event_type = $2)";
        let rows = self
            .timed(client.query(
                &format!(
                    "SELECT event_id::text, \
                     to_char(event_timestamp AT TIME ZONE 'UTC', \
                             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                     event_type, event_category, event_action, event_outcome, \
                     correlation_id, actor_id, resource_type, resource_id, event_data::text \
                     FROM audit_events WHERE {FILTER} \
                     ORDER BY event_timestamp DESC, event_id LIMIT $3"
                ),
                &[&query.correlation_id, &query.event_type, &query.limit],
            ))
            .await?;
        let total: i64 = self
            .timed(client.query_one(
                &format!("SELECT count(*) FROM audit_events WHERE {FILTER}"),
                &[&query.correlation_id, &query.event_type],
            ))
            .await?
            .get(0);
        let events = rows
            .iter()
            .map(|row| {
                let data: String = row.get(10);
                Event {
                    event_id: row.get(0),
                    event_timestamp: row.get(1),
                    event_type: row.get(2),
                    event_category: row.get(3),
                    event_action: row.get(4),
                    event_outcome: row.get(5),
                    correlation_id: row.get(6),
                    actor_id: row.get(7),
                    resource_type: row.get(8),
                    resource_id: row.get(9),
                    event_data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                }
            })
            .collect();
        Ok((events, total))
    }
}
