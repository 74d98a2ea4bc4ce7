//! A throwaway PostgreSQL server: `initdb` into a temporary folder, then
//! `postgres` on 127.0.0.1 and a free port. PostgreSQL refuses to run as
//! root, so when the tests run as root both commands run as the `postgres`
//! system user (set through `Command::uid`/`gid`), in a folder that user owns.
//! Dropping the server stops it and removes the folder, also on panic.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const SUPERUSER: &str = "postgres";
const SUPERUSER_PASSWORD: &str = "superuser-test-password";
pub const APP_DB: &str = "action_history";
pub const APP_USER: &str = "slm_user";
pub const APP_PASSWORD: &str = "slm-test-password";

/// Where the PostgreSQL server binaries are: `PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `PATH`.
pub fn bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").map(PathBuf::from) {
        return has_server(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has_server(dir))
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The uid and gid of a system user, from `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Sends a signal by name through `kill(1)` (no libc binding needed).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Waits for `child` to exit, sending SIGKILL after `grace`.
pub fn wait_or_kill(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

pub struct PgServer {
    bin: PathBuf,
    dir: TempDir,
    run_as: Option<(u32, u32)>,
    pub port: u16,
    child: Option<Child>,
}

impl PgServer {
    /// Initialises a data folder, or says why that cannot be done here.
    pub fn init() -> Result<PgServer, String> {
        let bin = bin_dir().ok_or(
            "no PostgreSQL server binaries (initdb, postgres) in PG_BIN_DIR, \
             /usr/lib/postgresql/*/bin or PATH; install PostgreSQL",
        )?;
        let run_as = if effective_uid() == Some(0) {
            Some(system_user("postgres").ok_or(
                "running as root, and PostgreSQL refuses to run as root: \
                 a `postgres` system user is needed to run it as",
            )?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("kl-pg-")
            .tempdir()
            .map_err(|e| format!("creating a temporary folder: {e}"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("handing {} to postgres: {e}", dir.path().display()))?;
        }
        let pwfile = dir.path().join("superuser-password");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).map_err(|e| e.to_string())?;
        let server = PgServer {
            bin,
            dir,
            run_as,
            port: crate::common::free_port(),
            child: None,
        };
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(server.data_dir())
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "initdb failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(server)
    }

    /// [`PgServer::init`], then [`PgServer::start`] and the application's
    /// role and database; `None` (after [`crate::common::skip`]) when
    /// PostgreSQL cannot run here.
    pub fn start_with_app_db(test: &str) -> Option<PgServer> {
        match PgServer::init() {
            Ok(mut pg) => {
                pg.start();
                pg.create_app_db();
                Some(pg)
            }
            Err(why) => {
                crate::common::skip(test, &why);
                None
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the server log");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log handle"))
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!("postgres exited ({status}) while starting:\n{}", self.log());
            }
            let up = crate::common::block_on(async {
                self.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres")
                    .await
                    .is_ok()
            });
            if up {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "postgres did not accept connections in 30s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (SIGINT), as an outage the service must survive.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "INT");
            wait_or_kill(&mut child, Duration::from_secs(15));
        }
    }

    /// Connects over TCP with a password, like the service does.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// The application's connection (what the migrations run as).
    pub async fn app_client(&self) -> tokio_postgres::Client {
        self.connect(APP_USER, APP_PASSWORD, APP_DB)
            .await
            .expect("connecting as the application user")
    }

    /// Creates the `slm_user` role and the `action_history` database it owns,
    /// as the deployment does.
    pub fn create_app_db(&self) {
        crate::common::block_on(async {
            let client = self
                .connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres")
                .await
                .expect("connecting as the superuser");
            client
                .batch_execute(&format!(
                    "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"
                ))
                .await
                .expect("creating the role");
            client
                .batch_execute(&format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"))
                .await
                .expect("creating the database");
        });
    }

    /// Applies the example's migrations as the application user.
    pub fn migrate(&self) -> crate::common::migrations::Applied {
        let migrations = crate::common::migrations::load(&crate::common::migrations_dir())
            .expect("loading the migrations");
        crate::common::block_on(async {
            let client = self.app_client().await;
            crate::common::migrations::apply(&client, &migrations)
                .await
                .expect("applying the migrations")
        })
    }

    /// The service's database variables, pointing at this server.
    pub fn service_env(&self, host: &str) -> Vec<(&'static str, String)> {
        vec![
            ("DB_HOST", host.to_string()),
            ("DB_PORT", self.port.to_string()),
            ("DB_NAME", APP_DB.to_string()),
            ("DB_USER", APP_USER.to_string()),
            ("DB_PASSWORD", APP_PASSWORD.to_string()),
            ("DB_SSLMODE", "disable".to_string()),
        ]
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the data is thrown away anyway.
            signal(child.id(), "QUIT");
            wait_or_kill(&mut child, Duration::from_secs(10));
        }
    }
}
