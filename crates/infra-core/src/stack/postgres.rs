//! PostgreSQL as the original deployed it: a Secret with the credentials, an
//! init ConfigMap creating the application role and database, a
//! `postgres:16-alpine` Deployment on an emptyDir with `pg_isready` probes, and
//! a Service (NodePort optional).

use std::time::Duration;

use serde_json::json;

use super::{Component, deployment, deployment_ready, labels, object, service, service_port};

/// Where PostgreSQL runs and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub namespace: String,
    /// Deployment, Service and host name inside the namespace.
    pub name: String,
    pub image: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Publish 5432 on this NodePort (the original used 30432).
    pub node_port: Option<u16>,
    pub timeout: Duration,
}

impl PostgresConfig {
    /// PostgreSQL 16 in `namespace` with database `app`, owned by user `app`
    /// (a service's recipe names its own with [`PostgresConfig::database`]).
    pub fn new(namespace: &str) -> PostgresConfig {
        PostgresConfig {
            namespace: namespace.to_string(),
            name: "postgresql".into(),
            image: "postgres:16-alpine".into(),
            database: "app".into(),
            user: "app".into(),
            password: "app-e2e-password".into(),
            node_port: None,
            timeout: Duration::from_secs(180),
        }
    }

    /// The application's database, and the user who owns it.
    #[must_use]
    pub fn database(mut self, database: &str, user: &str, password: &str) -> Self {
        self.database = database.into();
        self.user = user.into();
        self.password = password.into();
        self
    }

    #[must_use]
    pub fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    /// The Secret holding the credentials (keys `POSTGRES_USER`,
    /// `POSTGRES_PASSWORD`, `POSTGRES_DB`, and the app's `DB_*`).
    pub fn secret_name(&self) -> String {
        format!("{}-secret", self.name)
    }

    /// The host name other pods use.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    pub fn component(&self) -> Component {
        let ns = &self.namespace;
        let name = &self.name;
        let labels = labels(name);
        let init_sql = format!(
            "DO $$ BEGIN\n  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN\n    \
             CREATE ROLE {user} LOGIN PASSWORD '{password}';\n  END IF;\nEND $$;\n\
             CREATE DATABASE {db} OWNER {user};\nGRANT ALL PRIVILEGES ON DATABASE {db} TO {user};\n",
            user = self.user,
            password = self.password,
            db = self.database
        );
        let probe = json!({
            "exec": {"command": ["sh", "-c", format!("pg_isready -U {} -d {}", self.user, self.database)]},
            "initialDelaySeconds": 2, "periodSeconds": 2, "timeoutSeconds": 3, "failureThreshold": 30
        });
        Component {
            name: "postgresql".into(),
            objects: vec![
                object(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": self.secret_name(), "namespace": ns, "labels": labels},
                    "type": "Opaque",
                    "stringData": {
                        "POSTGRES_USER": "postgres",
                        "POSTGRES_PASSWORD": self.password,
                        "POSTGRES_DB": "postgres",
                        "DB_USER": self.user,
                        "DB_PASSWORD": self.password,
                        "DB_NAME": self.database,
                    }
                })),
                object(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("{name}-init"), "namespace": ns, "labels": labels},
                    "data": {"00-create-role.sql": init_sql}
                })),
                deployment(
                    ns,
                    name,
                    json!({
                        "containers": [{
                            "name": "postgresql",
                            "image": self.image,
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"containerPort": 5432, "name": "postgres"}],
                            "envFrom": [{"secretRef": {"name": self.secret_name()}}],
                            "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {"name": "init", "mountPath": "/docker-entrypoint-initdb.d"}
                            ],
                            "readinessProbe": probe,
                            "livenessProbe": probe,
                        }],
                        "volumes": [
                            {"name": "data", "emptyDir": {}},
                            {"name": "init", "configMap": {"name": format!("{name}-init")}}
                        ]
                    }),
                ),
                service(
                    ns,
                    name,
                    vec![service_port("postgres", 5432, self.node_port)],
                ),
            ],
            ready: vec![deployment_ready(ns, name, self.timeout)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::test_support::assert_round_trips;

    #[test]
    fn objects_are_valid_and_node_port_is_optional() {
        let plain = PostgresConfig::new("ds-e2e").component();
        assert_eq!(plain.objects.len(), 4);
        plain.objects.iter().for_each(assert_round_trips);
        let service = serde_json::to_value(&plain.objects[3]).unwrap();
        assert_eq!(service["spec"]["type"], "ClusterIP");

        let exposed = PostgresConfig::new("ds-e2e").node_port(30432).component();
        exposed.objects.iter().for_each(assert_round_trips);
        let service = serde_json::to_value(&exposed.objects[3]).unwrap();
        assert_eq!(service["spec"]["type"], "NodePort");
        assert_eq!(service["spec"]["ports"][0]["nodePort"], 30432);
        assert_eq!(exposed.ready[0].name, "postgresql");
    }

    #[test]
    fn init_script_creates_the_role_and_database() {
        let pg = PostgresConfig::new("x").database("orders", "shop", "secret");
        let init = serde_json::to_value(&pg.component().objects[1]).unwrap();
        let sql = init["data"]["00-create-role.sql"].as_str().unwrap();
        assert!(sql.contains("CREATE ROLE shop LOGIN PASSWORD 'secret'"));
        assert!(sql.contains("CREATE DATABASE orders OWNER shop"));
        assert_eq!(pg.host(), "postgresql.x.svc.cluster.local");
    }
}
