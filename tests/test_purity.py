"""`learners/` and `schemas/` import no Kafka, Redis or HTTP library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("kafka", "confluent_kafka", "redis", "fastapi", "starlette", "faust", "aiokafka")

SCRIPT = f"""
import importlib, json, pkgutil, sys
names = []
for package in ("learners", "schemas"):
    module = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
        names.append(info.name)
forbidden = {FORBIDDEN!r}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print(json.dumps({{"imported": names, "forbidden": loaded}}))
"""


def test_pure_rooms_import_no_io_library():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "learners.core" in report["imported"]
    assert "schemas.events" in report["imported"]
    assert report["forbidden"] == []
