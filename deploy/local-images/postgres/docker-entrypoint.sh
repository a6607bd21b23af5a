#!/bin/bash
# The official postgres image's start-up contract, for Debian's PostgreSQL:
# first start on an empty $PGDATA runs initdb for POSTGRES_USER (default postgres) with
# POSTGRES_PASSWORD, allows password logins from anywhere (POSTGRES_HOST_AUTH_METHOD,
# default scram-sha-256), creates POSTGRES_DB (default: the user's name), runs
# /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz, *.sql.xz in order, then starts postgres.
# Every VAR may be given as VAR_FILE (a file holding the value, e.g. a compose secret).
set -Eeuo pipefail

file_env() {
  local var=$1 default=${2:-} file_var="${1}_FILE"
  if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
    echo >&2 "error: both $var and $file_var are set (they are exclusive)"
    exit 1
  fi
  local value=$default
  if [ -n "${!var:-}" ]; then
    value=${!var}
  elif [ -n "${!file_var:-}" ]; then
    value=$(<"${!file_var}")
  fi
  export "$var"="$value"
  unset "$file_var"
}

if [ "${1:0:1}" = '-' ]; then
  set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  # A fresh volume is root's: hand it to postgres, then run this script again as postgres.
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  chmod 3777 /var/run/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  file_env POSTGRES_INITDB_ARGS
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
    cat >&2 <<'MSG'
error: database is uninitialized and superuser password is not specified.
  Set POSTGRES_PASSWORD to a non-empty value for the superuser, or
  POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without a password.
MSG
    exit 1
  fi

  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as upstream
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" $POSTGRES_INITDB_ARGS
  rm -f "$pwfile"
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

  # A server only this script can reach (no TCP) while the database is set up.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
  export PGPASSWORD=${PGPASSWORD:-$POSTGRES_PASSWORD}
  psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [ "$POSTGRES_DB" != postgres ]; then
    "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db" ;'
  fi
  psql+=(--dbname "$POSTGRES_DB")
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then
          echo "$0: running $f"
          "$f"
        else
          echo "$0: sourcing $f"
          # shellcheck disable=SC1090
          . "$f"
        fi
        ;;
      *.sql) echo "$0: running $f"; "${psql[@]}" -f "$f" ;;
      *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql[@]}" ;;
      *.sql.xz) echo "$0: running $f"; xz -dc "$f" | "${psql[@]}" ;;
      *"/*") ;;  # an empty directory
      *) echo "$0: ignoring $f" ;;
    esac
  done
  unset PGPASSWORD
  pg_ctl -D "$PGDATA" -m fast -w stop
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
