"""The HTTP API over a real index."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from node.api.app import create_app
from node.assembly.watcher import CompletenessWatcher
from node.routing.dispatch import Dispatcher
from node.routing.rules import RuleSet
from node.store.database import Database
from tests.unit.node.records import ct_record, store


def test_health_and_jobs(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    db.create_schema()
    rules = RuleSet.model_validate(
        {
            "rules": [
                {
                    "name": "ct",
                    "pipeline": "lung_seg",
                    "model": "lung_seg",
                    "version": "1",
                    "destinations": ["pacs"],
                }
            ]
        }
    )
    store(db, ct_record("1.2.3.4.1"))
    CompletenessWatcher(db, Dispatcher(rules), quiet_period_s=0).poll()
    client = TestClient(create_app(db))
    assert client.get("/health").json() == {"status": "ok"}
    [job] = client.get("/jobs").json()
    assert (job["id"], job["state"], job["model"]) == (1, "pending", "lung_seg")
    assert job["series"] != "1.2.3.4"  # hashed, never the UID
    # What `jobs show` prints too: refused (intended-use refusal), explanations, the shadow.
    assert (job["refused"], job["explain"], job["shadow_version"], job["shadow"]) == (
        False,
        False,
        None,
        None,
    )
    detail = client.get("/jobs/1").json()
    assert detail["history"][0]["state"] == "pending"
    assert client.get("/jobs/2").status_code == 404
    assert client.get("/jobs", params={"state": "done"}).json() == []
