import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the network
os.environ.setdefault("MPLBACKEND", "Agg")

HUB_BUILDER = Path(__file__).parent / "hub" / "tiny_repos.py"


@pytest.fixture(scope="session")
def local_hub():
    """The tiny hub of tests/hub/tiny_repos.py (built once into the homl16 cache), served on 127.0.0.1:
    ``(server, url)``; ``server.hub.requested`` lists the repositories asked for."""
    from homl16.localhub import serve

    if not HUB_BUILDER.exists():
        pytest.skip("tests/hub/tiny_repos.py (the tiny hub's builder) is missing")
    spec = importlib.util.spec_from_file_location("tiny_repos", HUB_BUILDER)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    server, url = serve(builder.tiny_hub_dir())
    yield server, url
    server.shutdown()
