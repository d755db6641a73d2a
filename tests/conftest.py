import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the network
os.environ.setdefault("MPLBACKEND", "Agg")

HUB_BUILDER = Path(__file__).parent / "hub" / "tiny_repos.py"


@pytest.fixture(scope="session")
def local_hub():
    """The tiny hub of tests/hub/tiny_repos.py, served on 127.0.0.1: ``(server, url, ids)``, ids: id -> kind.

    Built once per version of the builder (its digest names the folder) into the homl16 cache.
    """
    from homl16.localhub import serve
    from homl16.runtime import cache_dir, write_once

    if not HUB_BUILDER.exists():
        pytest.skip("tests/hub/tiny_repos.py (the tiny hub's builder) is missing")
    spec = importlib.util.spec_from_file_location("tiny_repos", HUB_BUILDER)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)

    def build(tmp):
        ids = builder.build_tiny_hub(tmp)
        (Path(tmp) / "ids.json").write_text(json.dumps(ids, indent=1, sort_keys=True))

    digest = hashlib.sha256(HUB_BUILDER.read_bytes()).hexdigest()[:12]
    root = write_once(cache_dir() / f"tiny-hub-{digest}", build)
    server, url = serve(root)
    yield server, url, json.loads((root / "ids.json").read_text())
    server.shutdown()
