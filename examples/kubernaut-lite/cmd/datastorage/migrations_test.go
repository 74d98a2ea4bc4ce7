package main

// The example's goose migrations, applied the way the deployment does:
// files named <number>_<name>.sql in numeric order, only the `-- +goose Up`
// section, CONCURRENTLY stripped from statements, and "already exists"
// errors tolerated so that a second application is harmless. The service
// does not apply them itself; this applier is the tests' own.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"kubernaut-lite/pkg/datastorage"
)

type migration struct {
	version  uint64
	name     string
	path     string
	up, down []string
}

// loadMigrations reads the migrations in dir, in numeric order.
func loadMigrations(dir string) ([]migration, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var all []migration
	for _, entry := range entries {
		file := entry.Name()
		stem, ok := strings.CutSuffix(file, ".sql")
		if !ok {
			continue
		}
		number, name, ok := strings.Cut(stem, "_")
		if !ok {
			return nil, fmt.Errorf("%s: not named <number>_<name>.sql", file)
		}
		version, err := strconv.ParseUint(number, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: `%s` is not a number", file, number)
		}
		path := filepath.Join(dir, file)
		text, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		up, down, err := sections(string(text))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		all = append(all, migration{version: version, name: name, path: path, up: up, down: down})
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].version < all[j].version })
	for i := 1; i < len(all); i++ {
		if all[i-1].version == all[i].version {
			return nil, fmt.Errorf("%s and %s share version %d", all[i-1].path, all[i].path, all[i].version)
		}
	}
	return all, nil
}

// sections splits a goose file into the statements of its Up and Down
// sections. A statement ends with a line ending in `;`, except between
// `-- +goose StatementBegin` and `-- +goose StatementEnd`.
func sections(text string) (up, down []string, err error) {
	const (
		none = iota
		inUp
		inDown
	)
	section, seenUp, inBlock := none, false, false
	var current strings.Builder
	push := func() {
		into := &down
		if section == inUp {
			into = &up
		}
		// Leading blank and comment lines belong to no statement.
		lines := strings.Split(current.String(), "\n")
		for len(lines) > 0 && (strings.TrimSpace(lines[0]) == "" || strings.HasPrefix(strings.TrimSpace(lines[0]), "--")) {
			lines = lines[1:]
		}
		if statement := strings.TrimSpace(strings.Join(lines, "\n")); statement != "" {
			*into = append(*into, statement)
		}
		current.Reset()
	}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSuffix(line, "\r")
		trimmed := strings.TrimSpace(line)
		if annotation, ok := strings.CutPrefix(trimmed, "-- +goose "); ok {
			switch strings.TrimSpace(annotation) {
			case "Up":
				section, seenUp = inUp, true
			case "Down":
				section = inDown
			case "StatementBegin":
				inBlock = true
			case "StatementEnd":
				inBlock = false
				push()
			}
			continue
		}
		if section == none {
			continue
		}
		current.WriteString(line)
		current.WriteByte('\n')
		if !inBlock && strings.HasSuffix(trimmed, ";") {
			push()
		}
	}
	if !seenUp {
		return nil, nil, errors.New("no `-- +goose Up` annotation")
	}
	push()
	return up, down, nil
}

// stripConcurrently removes the word CONCURRENTLY (any case) and the
// whitespace after it: the applier runs statements where concurrent index
// builds are not allowed or not needed.
func stripConcurrently(statement string) string {
	const word = "CONCURRENTLY"
	upper := []byte(statement)
	for i, c := range upper {
		if 'a' <= c && c <= 'z' {
			upper[i] = c - 'a' + 'A'
		}
	}
	boundary := func(i int) bool {
		if i < 0 || i >= len(upper) {
			return true
		}
		c := upper[i]
		return !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_')
	}
	var out strings.Builder
	rest, from := 0, 0
	for {
		found := strings.Index(string(upper[from:]), word)
		if found < 0 {
			break
		}
		start := from + found
		end := start + len(word)
		if boundary(start-1) && boundary(end) {
			out.WriteString(statement[rest:start])
			rest = len(statement) - len(strings.TrimLeftFunc(statement[end:], unicode.IsSpace))
		}
		from = end
	}
	out.WriteString(statement[rest:])
	return out.String()
}

// applied is what applyMigrations did.
type applied struct {
	statements int
	// tolerated counts statements that failed with "already exists".
	tolerated int
}

// applyMigrations runs the Up sections, in the order given.
func applyMigrations(conn *pgx.Conn, migrations []migration) (applied, error) {
	var result applied
	for _, m := range migrations {
		if err := run(conn, m, m.up, &result); err != nil {
			return result, err
		}
	}
	return result, nil
}

// revertMigrations runs the Down sections in reverse order.
func revertMigrations(conn *pgx.Conn, migrations []migration) (applied, error) {
	var result applied
	for i := len(migrations) - 1; i >= 0; i-- {
		if err := run(conn, migrations[i], migrations[i].down, &result); err != nil {
			return result, err
		}
	}
	return result, nil
}

func run(conn *pgx.Conn, m migration, statements []string, result *applied) error {
	for _, statement := range statements {
		statement = stripConcurrently(statement)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		// No arguments: the simple query protocol, as psql and goose run files.
		_, err := conn.Exec(ctx, statement)
		cancel()
		if err == nil {
			result.statements++
			continue
		}
		message := err.Error()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			message = pgErr.Message
		}
		if !strings.Contains(message, "already exists") {
			return fmt.Errorf("%s: %s\nin: %s", m.path, message, statement)
		}
		result.tolerated++
	}
	return nil
}

func TestMigrationFilesParseInNumericOrder(t *testing.T) {
	all, err := loadMigrations(migrationsDir(t))
	if err != nil {
		t.Fatal(err)
	}
	var versions []uint64
	for _, m := range all {
		versions = append(versions, m.version)
		if len(m.up) == 0 || len(m.down) == 0 {
			t.Fatalf("%+v", m)
		}
		for _, s := range m.up {
			if strings.Contains(s, "DROP ") {
				t.Fatalf("a DROP in Up: %+v", m)
			}
		}
		for _, s := range m.down {
			if !strings.HasPrefix(s, "DROP ") {
				t.Fatalf("not a DROP in Down: %+v", m)
			}
		}
	}
	if !reflect.DeepEqual(versions, []uint64{1, 2}) || all[0].name != "audit_events" {
		t.Fatalf("%+v", all)
	}
	if !strings.HasPrefix(all[0].up[0], "CREATE TABLE audit_events") {
		t.Fatal(all[0].up[0])
	}
	// As in the real repository, indexes are created CONCURRENTLY.
	concurrently := false
	for _, s := range all[0].up {
		concurrently = concurrently || strings.Contains(s, "CREATE INDEX CONCURRENTLY")
	}
	if !concurrently {
		t.Fatalf("no CREATE INDEX CONCURRENTLY in %q", all[0].up)
	}
}

func TestOrderIsNumericNotLexical(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"10_c.sql", "2_b.sql", "1_a.sql"} {
		write(name, "-- +goose Up\nSELECT 1;\n")
	}
	write("README.md", "not a migration")
	all, err := loadMigrations(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range all {
		names = append(names, m.name)
	}
	if !reflect.DeepEqual(names, []string{"a", "b", "c"}) {
		t.Fatal(names)
	}

	write("002_again.sql", "-- +goose Up\nSELECT 1;\n")
	if _, err := loadMigrations(dir); err == nil || !strings.Contains(err.Error(), "share version 2") {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "002_again.sql"))
	write("x_bad.sql", "-- +goose Up\n")
	if _, err := loadMigrations(dir); err == nil || !strings.Contains(err.Error(), "not a number") {
		t.Fatal(err)
	}
}

func TestOnlyTheUpSectionIsAppliedAndBlocksStayWhole(t *testing.T) {
	text := `-- a header comment
-- +goose Up
CREATE TABLE t (id int);
-- +goose StatementBegin
CREATE FUNCTION f() RETURNS int AS $$
BEGIN
  RETURN 1;
END;
$$ LANGUAGE plpgsql;
-- +goose StatementEnd
CREATE INDEX
    CONCURRENTLY idx_t ON t (id);

-- +goose Down
DROP TABLE t;
`
	up, down, err := sections(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(up) != 3 || up[0] != "CREATE TABLE t (id int);" {
		t.Fatalf("%q", up)
	}
	if !strings.HasPrefix(up[1], "CREATE FUNCTION") || !strings.HasSuffix(up[1], "plpgsql;") {
		t.Fatalf("%q", up[1])
	}
	if !reflect.DeepEqual(down, []string{"DROP TABLE t;"}) {
		t.Fatalf("%q", down)
	}
	if got := stripConcurrently(up[2]); got != "CREATE INDEX\n    idx_t ON t (id);" {
		t.Fatalf("%q", got)
	}
	if _, _, err := sections("CREATE TABLE t (id int);"); err == nil {
		t.Fatal("a file without an Up annotation was accepted")
	}
}

func TestStripConcurrentlyRemovesOnlyTheKeyword(t *testing.T) {
	for in, want := range map[string]string{
		"CREATE INDEX CONCURRENTLY i ON t (x);":         "CREATE INDEX i ON t (x);",
		"create unique index concurrently i on t (x);":  "create unique index i on t (x);",
		"CREATE INDEX i ON concurrently_used (x);":      "CREATE INDEX i ON concurrently_used (x);",
		"CREATE INDEX Concurrently\n\ti ON é_t (x);":    "CREATE INDEX i ON é_t (x);",
		"COMMENT ON TABLE t IS 'é CONCURRENTLY twice';": "COMMENT ON TABLE t IS 'é twice';",
	} {
		if got := stripConcurrently(in); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func TestMigrationsApplyInOrderTwiceAndRevert(t *testing.T) {
	pg := startPGWithAppDB(t)
	all, err := loadMigrations(migrationsDir(t))
	if err != nil {
		t.Fatal(err)
	}
	conn := pg.appConn()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tables := func() []string {
		rows, err := conn.Query(ctx, "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
		if err != nil {
			t.Fatal(err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	count := func(sql string) int64 {
		var n int64
		if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}

	// 002 builds on 001: out of order it fails.
	if _, err := applyMigrations(conn, all[1:]); err == nil || !strings.Contains(err.Error(), `"audit_events" does not exist`) {
		t.Fatalf("002 alone: %v", err)
	}

	first, err := applyMigrations(conn, all)
	if err != nil || first.tolerated != 0 {
		t.Fatalf("%+v %v", first, err)
	}
	// The readiness probe requires exactly the tables the migrations create.
	required := append([]string(nil), datastorage.RequiredTables...)
	sort.Strings(required)
	if got := tables(); !reflect.DeepEqual(got, required) {
		t.Fatalf("tables %q, want %q", got, required)
	}
	if n := count("SELECT count(*) FROM audit_retention_policies"); n != 3 {
		t.Fatalf("%d retention policies", n)
	}

	// Re-application: "already exists" is tolerated, nothing changes.
	second, err := applyMigrations(conn, all)
	if err != nil || second.tolerated != 4 {
		t.Fatalf("%+v %v", second, err)
	}
	if got := tables(); !reflect.DeepEqual(got, required) {
		t.Fatalf("tables %q after re-application", got)
	}

	// The Down sections undo everything.
	if _, err := revertMigrations(conn, all); err != nil {
		t.Fatal(err)
	}
	if got := tables(); len(got) != 0 {
		t.Fatalf("tables left: %q", got)
	}
	if n := count("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'idx_audit_events%'"); n != 0 {
		t.Fatalf("%d indexes left", n)
	}
}
