#!/bin/sh
# Berth's container entry point: wait for the database, apply migrations, run the command
# (by default `berth serve`). Also usable outside a container, e.g. from a systemd unit.
#
#   BERTH_DATABASE_URL      the database (required in practice; see README Configuration)
#   BERTH_DB_WAIT_TIMEOUT   seconds to wait for the database to accept connections (60)
#   BERTH_PYTHON            the interpreter that has Berth installed (python)
#
# With no arguments, or arguments starting with "-", runs `berth serve --bind 0.0.0.0:5000 ...`.
set -eu

python=${BERTH_PYTHON:-python}
timeout=${BERTH_DB_WAIT_TIMEOUT:-60}

if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- berth serve --bind 0.0.0.0:5000 "$@"
fi

# PostgreSQL starts after us in a compose project and refuses connections for a while:
# retry until it answers, then give up with the last error (the URL's password hidden).
"$python" - "$timeout" <<'PY'
import sys
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import ConfigError, load_settings
from app.db.session import engine_url

try:
    settings = load_settings()
except ConfigError as exc:
    sys.exit(f"berth-entrypoint: configuration: {exc}")
url = engine_url(settings.database_url)
shown = make_url(settings.database_url).render_as_string(hide_password=True)
args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
engine = create_engine(url, connect_args=args)
deadline = time.monotonic() + float(sys.argv[1])
while True:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        break
    except Exception as exc:
        if time.monotonic() >= deadline:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            sys.exit(f"berth-entrypoint: database {shown} not reachable: {reason}")
        time.sleep(1)
engine.dispose()
print(f"berth-entrypoint: database {shown} is up", flush=True)
PY

berth migrate
exec "$@"
