#!/usr/bin/env bash
# Entrypoint of the offline PostgreSQL image (Debian's postgresql-15 standing in
# for postgres:16-alpine). It follows the official image's contract:
#
#   POSTGRES_PASSWORD  superuser password; required on first start unless
#                      POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER      superuser name (default: postgres)
#   POSTGRES_DB        database created on first start (default: POSTGRES_USER)
#   PGDATA             data directory (default: /var/lib/postgresql/data); may be
#                      a subdirectory of an empty mounted volume
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default: scram-sha-256), and
#   the *_FILE variants of POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and
#   POSTGRES_INITDB_ARGS.
#
# First start (no $PGDATA/PG_VERSION): initdb as the postgres OS user, a
# temporary server on the unix socket only, POSTGRES_DB created, every
# /docker-entrypoint-initdb.d/*.sql, *.sql.gz and *.sh run in sorted order,
# the temporary server stopped. Then postgres is exec'd in the foreground (it
# becomes PID 1 and receives the stop signal), listening on '*':5432, logging to
# stderr. Started as root, the script prepares the directories and re-executes
# itself as postgres with setpriv (util-linux; there is no gosu in Debian's base).
set -Eeo pipefail

# file_env VAR [DEFAULT]: VAR from $VAR, or from the file named by $VAR_FILE.
file_env() {
	local var="$1"
	local fileVar="${var}_FILE"
	local def="${2:-}"
	if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
		printf >&2 'error: both %s and %s are set (but are exclusive)\n' "$var" "$fileVar"
		exit 1
	fi
	local val="$def"
	if [ "${!var:-}" ]; then
		val="${!var}"
	elif [ "${!fileVar:-}" ]; then
		val="$(< "${!fileVar}")"
	fi
	export "$var"="$val"
	unset "$fileVar"
}

# Arguments that only ask postgres a question (--help, --version, -C ...).
_pg_want_help() {
	local arg
	for arg; do
		case "$arg" in
			-'?'|--help|--describe-config|-V|--version|-C|--config-file=*)
				return 0
				;;
		esac
	done
	return 1
}

docker_setup_env() {
	file_env 'POSTGRES_PASSWORD'
	file_env 'POSTGRES_USER' 'postgres'
	file_env 'POSTGRES_DB' "$POSTGRES_USER"
	file_env 'POSTGRES_INITDB_ARGS'
	: "${PGDATA:=/var/lib/postgresql/data}"
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	export PGDATA POSTGRES_HOST_AUTH_METHOD
	DATABASE_ALREADY_EXISTS=
	if [ -s "$PGDATA/PG_VERSION" ]; then
		DATABASE_ALREADY_EXISTS='true'
	fi
}

# As root: make $PGDATA (possibly below an empty volume) and the socket
# directory, owned by postgres.
docker_create_db_directories() {
	mkdir -p "$PGDATA"
	chmod 00700 "$PGDATA" || :
	mkdir -p /var/run/postgresql
	chmod 03777 /var/run/postgresql || :
	if [ "$(id -u)" = '0' ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
		find /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
	fi
}

docker_verify_minimum_env() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ 'trust' != "$POSTGRES_HOST_AUTH_METHOD" ]; then
		cat >&2 <<-'EOE'
			Error: Database is uninitialized and superuser password is not specified.
			       You must specify POSTGRES_PASSWORD to a non-empty value for the
			       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

			       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
			       connections without a password. This is *not* recommended.
		EOE
		exit 1
	fi
}

docker_init_database_dir() {
	# The superuser is POSTGRES_USER with POSTGRES_PASSWORD; local (unix socket)
	# connections are trusted, as in the official image, which the init phase
	# relies on; TCP connections need the password.
	local initdb_args=()
	if [ -n "$POSTGRES_INITDB_ARGS" ]; then
		# shellcheck disable=SC2206 # word splitting is the point
		initdb_args=( $POSTGRES_INITDB_ARGS )
	fi
	initdb \
		--username="$POSTGRES_USER" \
		--pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
		--auth-local=trust \
		--auth-host="$POSTGRES_HOST_AUTH_METHOD" \
		"${initdb_args[@]}" \
		"$@"
}

docker_setup_hba_conf() {
	{
		printf '\n'
		if [ 'trust' = "$POSTGRES_HOST_AUTH_METHOD" ]; then
			printf '# warning trust is enabled for all connections\n'
		fi
		printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
	} >> "$PGDATA/pg_hba.conf"
}

# psql as POSTGRES_USER on the unix socket, stopping at the first error.
docker_process_sql() {
	local query_runner=( psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc )
	if [ -n "$POSTGRES_DB" ]; then
		query_runner+=( --dbname "$POSTGRES_DB" )
	fi
	PGHOST= PGHOSTADDR= "${query_runner[@]}" "$@"
}

docker_setup_db() {
	local dbAlreadyExists
	dbAlreadyExists="$(
		POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<-'EOSQL'
			SELECT 1 FROM pg_database WHERE datname = :'db' ;
		EOSQL
	)"
	if [ -z "$dbAlreadyExists" ]; then
		POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db" ;
		EOSQL
		printf '\n'
	fi
}

docker_process_init_files() {
	local f
	for f; do
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then
					printf '%s: running %s\n' "$0" "$f"
					"$f"
				else
					printf '%s: sourcing %s\n' "$0" "$f"
					# shellcheck disable=SC1090
					. "$f"
				fi
				;;
			*.sql)    printf '%s: running %s\n' "$0" "$f"; docker_process_sql -f "$f"; printf '\n' ;;
			*.sql.gz) printf '%s: running %s\n' "$0" "$f"; gunzip -c "$f" | docker_process_sql; printf '\n' ;;
			*)        printf '%s: ignoring %s\n' "$0" "$f" ;;
		esac
	done
}

# The temporary server of the init phase: unix socket only.
docker_temp_server_start() {
	if [ "$1" = 'postgres' ]; then
		shift
	fi
	set -- "$@" -c listen_addresses='' -p "${PGPORT:-5432}"
	PGUSER="${PGUSER:-$POSTGRES_USER}" \
		pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@")" -w start
}

docker_temp_server_stop() {
	PGUSER="${PGUSER:-postgres}" \
		pg_ctl -D "$PGDATA" -m fast -w stop
}

_main() {
	# "docker run IMAGE -c foo=bar" means postgres with those options.
	if [ "${1:0:1}" = '-' ]; then
		set -- postgres "$@"
	fi

	if [ "$1" = 'postgres' ] && ! _pg_want_help "$@"; then
		docker_setup_env
		docker_create_db_directories
		if [ "$(id -u)" = '0' ]; then
			# Drop to postgres and start over; exec keeps PID 1.
			export HOME=/var/lib/postgresql
			exec setpriv --reuid=postgres --regid=postgres --init-groups \
				"$(readlink -f "${BASH_SOURCE[0]}")" "$@"
		fi

		if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
			docker_verify_minimum_env
			docker_init_database_dir
			docker_setup_hba_conf

			# Connections of the init phase: unix socket, as POSTGRES_USER.
			export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
			docker_temp_server_start "$@"
			docker_setup_db
			shopt -s nullglob
			docker_process_init_files /docker-entrypoint-initdb.d/*
			shopt -u nullglob
			docker_temp_server_stop
			unset PGPASSWORD

			printf '\nPostgreSQL init process complete; ready for start up.\n\n'
		else
			printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
		fi
	fi

	exec "$@"
}

_main "$@"
