package main

// A throwaway PostgreSQL server: initdb into a temporary folder, then
// postgres on 127.0.0.1 and a free port. PostgreSQL refuses to run as root,
// so when the tests run as root both commands run as the postgres system
// user, in a folder that user owns. The test's cleanup stops the server and
// removes the folder, also when the test fails.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	superuser         = "postgres"
	superuserPassword = "superuser-test-password"
	appDB             = "action_history"
	appUser           = "slm_user"
	appPassword       = "slm-test-password"
)

// pgBinDir is where the server binaries (initdb, postgres) are: PG_BIN_DIR,
// else the newest /usr/lib/postgresql/<version>/bin (Debian's layout), else
// PATH; "" when nowhere.
func pgBinDir() string {
	hasServer := func(dir string) bool {
		for _, name := range []string{"postgres", "initdb"} {
			if info, err := os.Stat(filepath.Join(dir, name)); err != nil || info.IsDir() {
				return false
			}
		}
		return true
	}
	if dir, ok := os.LookupEnv("PG_BIN_DIR"); ok {
		if hasServer(dir) {
			return dir
		}
		return ""
	}
	entries, _ := os.ReadDir("/usr/lib/postgresql")
	var versions []int
	for _, e := range entries {
		if v, err := strconv.Atoi(e.Name()); err == nil && hasServer(filepath.Join("/usr/lib/postgresql", e.Name(), "bin")) {
			versions = append(versions, v)
		}
	}
	if len(versions) > 0 {
		sort.Ints(versions)
		return filepath.Join("/usr/lib/postgresql", strconv.Itoa(versions[len(versions)-1]), "bin")
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir != "" && hasServer(dir) {
			return dir
		}
	}
	return ""
}

type pgServer struct {
	t    *testing.T
	bin  string
	dir  string
	cred *syscall.Credential
	port int
	proc *proc
}

// initPG initialises a data folder, or says why that cannot be done here.
// The server, once started, is stopped and the folder removed at the test's
// end.
func initPG(t *testing.T) (*pgServer, string) {
	t.Helper()
	bin := pgBinDir()
	if bin == "" {
		return nil, "no PostgreSQL server binaries (initdb, postgres) in PG_BIN_DIR, " +
			"/usr/lib/postgresql/*/bin or PATH; install PostgreSQL"
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, "running as root, and PostgreSQL refuses to run as root: " +
				"a `postgres` system user is needed to run it as"
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	// Not t.TempDir(): its parent is private to this user, and the server
	// may run as another one.
	dir, err := os.MkdirTemp("", "kl-pg-")
	if err != nil {
		t.Fatalf("creating a temporary folder: %v", err)
	}
	pg := &pgServer{t: t, bin: bin, dir: dir, cred: cred, port: freePort(t)}
	t.Cleanup(func() {
		if pg.proc != nil && !pg.proc.exited() {
			// Immediate shutdown: the data is thrown away anyway.
			pg.proc.signal(syscall.SIGQUIT)
			pg.proc.waitOrKill(10 * time.Second)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	pwfile := filepath.Join(dir, "superuser-password")
	if err := os.WriteFile(pwfile, []byte(superuserPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		for _, path := range []string{dir, pwfile} {
			if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatalf("handing %s to postgres: %v", path, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := pg.command(ctx, "initdb", "-D", pg.dataDir(), "-U", superuser, "-E", "UTF8", "--locale=C", "--no-sync",
		"--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile="+pwfile)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Sprintf("initdb failed (%v): %s", err, out)
	}
	return pg, ""
}

// startPGWithAppDB is initPG, start and the application's role and
// database; it skips (or fails under CI=true) when PostgreSQL cannot run.
func startPGWithAppDB(t *testing.T) *pgServer {
	t.Helper()
	pg, why := initPG(t)
	if pg == nil {
		skipOrFail(t, why)
	}
	pg.start()
	pg.createAppDB()
	return pg
}

func (pg *pgServer) command(ctx context.Context, program string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(pg.bin, program), args...)
	cmd.Dir = pg.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if pg.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred}
	}
	return cmd
}

func (pg *pgServer) dataDir() string { return filepath.Join(pg.dir, "data") }
func (pg *pgServer) logPath() string { return filepath.Join(pg.dir, "postgres.log") }

func (pg *pgServer) log() string {
	data, _ := os.ReadFile(pg.logPath())
	return string(data)
}

// start starts the server (again) and waits (30 s at most) until it
// accepts connections.
func (pg *pgServer) start() {
	pg.t.Helper()
	if pg.proc != nil && !pg.proc.exited() {
		pg.t.Fatal("postgres is already running")
	}
	logFile, err := os.OpenFile(pg.logPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		pg.t.Fatalf("opening the server log: %v", err)
	}
	defer logFile.Close()
	cmd := pg.command(context.Background(), "postgres", "-D", pg.dataDir(), "-k", pg.dir,
		"-h", "127.0.0.1", "-p", strconv.Itoa(pg.port),
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	p, err := startProc(cmd)
	if err != nil {
		pg.t.Fatalf("starting postgres: %v", err)
	}
	pg.proc = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			pg.t.Fatalf("postgres exited (%v) while starting:\n%s", cmd.ProcessState, pg.log())
		}
		if conn, err := pg.connect(superuser, superuserPassword, "postgres"); err == nil {
			conn.Close(context.Background())
			return
		}
		if time.Now().After(deadline) {
			pg.t.Fatalf("postgres did not accept connections in 30s:\n%s", pg.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop is a fast shutdown (SIGINT): an outage the service must survive.
func (pg *pgServer) stop() {
	pg.t.Helper()
	if pg.proc == nil || pg.proc.exited() {
		return
	}
	pg.proc.signal(syscall.SIGINT)
	if !pg.proc.waitOrKill(15 * time.Second) {
		pg.t.Logf("postgres did not stop within 15s of SIGINT: killed")
	}
}

// connect connects over TCP with a password, as the service does.
func (pg *pgServer) connect(user, password, db string) (*pgx.Conn, error) {
	config, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=5",
		pg.port, user, password, db))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, config)
}

// appConn is the application's connection (what the migrations run as),
// closed at the test's end.
func (pg *pgServer) appConn() *pgx.Conn {
	pg.t.Helper()
	conn, err := pg.connect(appUser, appPassword, appDB)
	if err != nil {
		pg.t.Fatalf("connecting as %s: %v", appUser, err)
	}
	pg.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// createAppDB creates the slm_user role and the action_history database it
// owns, as the deployment does.
func (pg *pgServer) createAppDB() {
	pg.t.Helper()
	conn, err := pg.connect(superuser, superuserPassword, "postgres")
	if err != nil {
		pg.t.Fatalf("connecting as the superuser: %v", err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, sql := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", appUser, appPassword),
		fmt.Sprintf("CREATE DATABASE %s OWNER %s", appDB, appUser),
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			pg.t.Fatalf("%s: %v", sql, err)
		}
	}
}

// migrate applies the example's migrations as the application user.
func (pg *pgServer) migrate() applied {
	pg.t.Helper()
	migrations, err := loadMigrations(migrationsDir(pg.t))
	if err != nil {
		pg.t.Fatalf("loading the migrations: %v", err)
	}
	result, err := applyMigrations(pg.appConn(), migrations)
	if err != nil {
		pg.t.Fatalf("applying the migrations: %v", err)
	}
	return result
}

// serviceEnv are the service's database variables, pointing at this server.
func (pg *pgServer) serviceEnv(host string) []string {
	return []string{
		"DB_HOST=" + host,
		fmt.Sprintf("DB_PORT=%d", pg.port),
		"DB_NAME=" + appDB,
		"DB_USER=" + appUser,
		"DB_PASSWORD=" + appPassword,
		"DB_SSLMODE=disable",
	}
}
