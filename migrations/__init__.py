"""Alembic migrations, shipped inside the wheel as app.migrations (setup.cfg package_dir)."""
