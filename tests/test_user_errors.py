"""A user's error (a bad setting, a bad file) is shown as its message alone, a bug with its
traceback; and a damaged MLflow store is refused before MLflow opens it."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io.core import DatasetError

from directclr.errors import BadSettingError, CorruptFileError
from directclr.framework import environment
from directclr.framework.environment import TRACKING_SWITCH, VERBOSE_SWITCH, show_user_errors
from directclr.framework.tracking import STORE_FILE, check_store

KEDRO = Path(sys.executable).parent / "kedro"


def test_kedro_prints_a_bad_settings_message_without_a_traceback(project):
    run = subprocess.run(
        [str(KEDRO), "run", "--pipeline=directclr", "--params=pretrainig.lr=5"],
        cwd=project, capture_output=True, text=True, timeout=300,
        env={**os.environ, TRACKING_SWITCH: "off", VERBOSE_SWITCH: "0", "COLUMNS": "200"},
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 1
    assert "UnknownSettingError: unknown parameter(s): pretrainig.lr (did you mean" in output
    assert "Traceback" not in output and f"{VERBOSE_SWITCH}=1 shows the traceback" in output


def test_user_errors_lose_their_traceback_unless_verbose_and_bugs_keep_it(monkeypatch, capsys):
    shown = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, trace: shown.append(error))
    show_user_errors()
    show_user_errors()  # installed once
    try:
        try:
            raise CorruptFileError("data/01_raw/x is damaged; delete it")
        except CorruptFileError as err:
            raise DatasetError("Failed while loading data from dataset") from err
    except DatasetError as wrapped:
        sys.excepthook(type(wrapped), wrapped, wrapped.__traceback__)
    assert shown == [] and "CorruptFileError: data/01_raw/x is damaged" in capsys.readouterr().err
    bug = KeyError("a bug")
    sys.excepthook(KeyError, bug, None)
    monkeypatch.setenv(VERBOSE_SWITCH, "1")
    user = BadSettingError("pretraining.lr=-1: set it above 0")
    sys.excepthook(BadSettingError, user, None)
    assert shown == [bug, user] and environment.verbose()


def _store(tmp_path: Path, tracking_store: str) -> Path:
    """A copy of a real MLflow store (the tests' shared one), to damage."""
    store = tmp_path / STORE_FILE
    store.write_bytes(Path(tracking_store.removeprefix("sqlite:///")).read_bytes())
    return store


def test_a_damaged_mlflow_store_is_refused_naming_it_and_the_way_out(tmp_path, tracking_store):
    store = _store(tmp_path, tracking_store)
    check_store(store)  # a sound store passes
    check_store(tmp_path / "none" / STORE_FILE)  # and one not made yet
    with sqlite3.connect(store) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='metrics'").fetchone()
    sound = store.read_bytes()
    garbage = bytes(range(256)) * (page // 256)
    for offset in (0, (root - 1) * page):  # the header; the metrics table's pages
        store.write_bytes(sound[:offset] + garbage + sound[offset + page :])
        with pytest.raises(CorruptFileError, match=rf"{STORE_FILE}.*is damaged") as error:
            check_store(store)
        assert "Move it aside" in str(error.value) and f"{TRACKING_SWITCH}=off" in str(error.value)


def test_a_run_into_a_damaged_store_stops_before_mlflow_opens_it(project, monkeypatch):
    monkeypatch.setenv(TRACKING_SWITCH, "on")
    store = project / STORE_FILE
    store.write_bytes(b"not a database" * 300)
    bootstrap_project(project)
    refused = pytest.raises(CorruptFileError, match="file is not a database")
    with refused, KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["directclr"])
    assert store.read_bytes() == b"not a database" * 300
    assert not (project / "data").exists()
