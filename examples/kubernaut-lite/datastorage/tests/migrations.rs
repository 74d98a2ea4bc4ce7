//! The example's goose migrations: naming, parsing, order and re-application.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]
mod common;

use common::migrations::{self, sections, strip_concurrently};
use common::pg::PgServer;
use kubernaut_lite_datastorage::db::REQUIRED_TABLES;

#[test]
fn migration_files_parse_in_numeric_order() {
    let all = migrations::load(&common::migrations_dir()).unwrap();
    let versions: Vec<u64> = all.iter().map(|m| m.version).collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(all[0].name, "audit_events");
    for migration in &all {
        assert!(
            !migration.up.is_empty() && !migration.down.is_empty(),
            "{migration:?}"
        );
        assert!(
            migration.up.iter().all(|s| !s.contains("DROP ")),
            "{migration:?}"
        );
        assert!(
            migration.down.iter().all(|s| s.starts_with("DROP ")),
            "{migration:?}"
        );
    }
    assert!(all[0].up[0].starts_with("CREATE TABLE audit_events"));
    // As in the real repository, indexes are created CONCURRENTLY.
    assert!(
        all[0]
            .up
            .iter()
            .any(|s| s.contains("CREATE INDEX CONCURRENTLY"))
    );
}

#[test]
fn order_is_numeric_not_lexical() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["10_c.sql", "2_b.sql", "1_a.sql"] {
        std::fs::write(dir.path().join(name), "-- +goose Up\nSELECT 1;\n").unwrap();
    }
    std::fs::write(dir.path().join("README.md"), "not a migration").unwrap();
    let names: Vec<String> = migrations::load(dir.path())
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["a", "b", "c"]);

    std::fs::write(
        dir.path().join("002_again.sql"),
        "-- +goose Up\nSELECT 1;\n",
    )
    .unwrap();
    assert!(
        migrations::load(dir.path())
            .unwrap_err()
            .contains("share version 2")
    );
    std::fs::remove_file(dir.path().join("002_again.sql")).unwrap();
    std::fs::write(dir.path().join("x_bad.sql"), "-- +goose Up\n").unwrap();
    assert!(
        migrations::load(dir.path())
            .unwrap_err()
            .contains("not a number")
    );
}

#[test]
fn only_the_up_section_is_applied_and_blocks_stay_whole() {
    let text = "\
-- a header comment
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
";
    let (up, down) = sections(text).unwrap();
    assert_eq!(up.len(), 3, "{up:#?}");
    assert_eq!(up[0], "CREATE TABLE t (id int);");
    assert!(up[1].starts_with("CREATE FUNCTION") && up[1].ends_with("plpgsql;"));
    assert_eq!(down, ["DROP TABLE t;"]);
    assert_eq!(
        strip_concurrently(&up[2]),
        "CREATE INDEX\n    idx_t ON t (id);"
    );
    assert!(sections("CREATE TABLE t (id int);").is_err());
}

#[test]
fn strip_concurrently_removes_only_the_keyword() {
    assert_eq!(
        strip_concurrently("CREATE INDEX CONCURRENTLY i ON t (x);"),
        "CREATE INDEX i ON t (x);"
    );
    assert_eq!(
        strip_concurrently("create unique index concurrently i on t (x);"),
        "create unique index i on t (x);"
    );
    assert_eq!(
        strip_concurrently("CREATE INDEX i ON concurrently_used (x);"),
        "CREATE INDEX i ON concurrently_used (x);"
    );
}

#[test]
fn migrations_apply_in_order_twice_and_revert() {
    let Some(pg) = PgServer::start_with_app_db("migrations_apply_in_order_twice_and_revert") else {
        return;
    };
    let all = migrations::load(&common::migrations_dir()).unwrap();
    common::block_on(async {
        let client = pg.app_client().await;
        let tables = || async {
            let rows = client
                .query(
                    "SELECT table_name::text FROM information_schema.tables \
                     WHERE table_schema = 'public' ORDER BY 1",
                    &[],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        };

        // 002 builds on 001: out of order it fails.
        let err = migrations::apply(&client, &all[1..]).await.unwrap_err();
        assert!(err.contains("\"audit_events\" does not exist"), "{err}");

        let first = migrations::apply(&client, &all).await.unwrap();
        assert_eq!(first.tolerated, 0);
        // The readiness probe requires exactly the tables the migrations create.
        let mut required = REQUIRED_TABLES.to_vec();
        required.sort();
        assert_eq!(tables().await, required);
        let policies: i64 = client
            .query_one("SELECT count(*) FROM audit_retention_policies", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(policies, 3);

        // Re-application: "already exists" is tolerated, nothing changes.
        let second = migrations::apply(&client, &all).await.unwrap();
        assert_eq!(second.tolerated, 4, "{second:?}");
        assert_eq!(tables().await, required);

        // The Down sections undo everything.
        migrations::revert(&client, &all).await.unwrap();
        assert!(tables().await.is_empty());
        let indexes: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'idx_audit_events%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(indexes, 0);
    });
}
