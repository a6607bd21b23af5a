"""The worker start-up hook of `berth serve` (app/gunicorn_conf.py)."""

from __future__ import annotations

import gc
import logging
from types import SimpleNamespace

from flask import Flask

from app import gunicorn_conf


def test_worker_start_keeps_the_loaded_app_out_of_full_collections(app: Flask) -> None:
    loaded = [{}]  # stands for the app's own objects, which live as long as the worker
    gc.unfreeze()
    try:
        # Also starts the upload purge thread, which first sleeps for ~an hour (the default
        # upload_purge_interval): longer than the test run.
        gunicorn_conf.post_worker_init(SimpleNamespace(wsgi=app, log=logging.getLogger()))
        assert gc.get_freeze_count() > 10_000
        assert not any(o is loaded for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
