"""The local hub: huggingface_hub, transformers and datasets download from it through HF_ENDPOINT."""

import os
import subprocess
import sys
import textwrap
import urllib.request
from urllib.error import HTTPError

import pytest

from homl16.localhub import serve


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub folder with a tiny random BERT (two revisions) and a 3-row parquet dataset, served."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("hub")
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    BertModel(config).save_pretrained(root / "models" / "tiny-org" / "tiny-bert" / "main")
    BertModel(config).save_pretrained(root / "models" / "tiny-bert-bare" / "v2")  # a bare id, revision v2
    data = root / "datasets" / "tiny-org" / "tiny-set" / "main" / "data"
    data.mkdir(parents=True)
    table = pa.table({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    pq.write_table(table, data / "train-00000-of-00001.parquet")
    server, url = serve(root)
    yield server, url
    server.shutdown()


def run_online(url, code, tmp_path):
    """Run ``code`` in a fresh Python with the hub at ``url`` (no offline mode, an empty HF_HOME)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf_home"), HF_UPDATE_DOWNLOAD_COUNTS="0")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_from_pretrained_and_load_dataset_download_through_the_local_hub(hub, tmp_path):
    server, url = hub
    before = len(server.hub.requested)
    out = run_online(url, """
        from datasets import load_dataset
        from transformers import AutoModel, BertModel
        from transformers.utils import cached_file
        model = AutoModel.from_pretrained("tiny-org/tiny-bert")  # probes optional files the repo lacks
        print(type(model).__name__, model.config.hidden_size)
        print(type(BertModel.from_pretrained("tiny-bert-bare", revision="v2")).__name__)
        # how transformers probes an optional file: None when the hub answers EntryNotFound
        print(cached_file("tiny-org/tiny-bert", "generation_config.json",
                          _raise_exceptions_for_missing_entries=False))
        dataset = load_dataset("tiny-org/tiny-set")
        print(list(dataset["train"]["text"]), list(dataset["train"]["label"]))
        """, tmp_path)
    assert out.split("\n")[:4] == ["BertModel 8", "BertModel", "None", "['a', 'b', 'c'] [0, 1, 0]"]
    assert {("model", "tiny-org/tiny-bert"), ("model", "tiny-bert-bare"),
            ("dataset", "tiny-org/tiny-set")} <= set(server.hub.requested[before:])


def test_the_hub_api_answers_as_huggingface_hub_expects(hub, tmp_path):
    out = run_online(hub[1], """
        from huggingface_hub import HfApi
        api = HfApi()
        info = api.model_info("tiny-org/tiny-bert")
        assert len(info.sha) == 40
        assert sorted(s.rfilename for s in info.siblings) == ["config.json", "model.safetensors"]
        assert api.list_repo_refs("tiny-org/tiny-bert").branches[0].target_commit == info.sha
        assert api.model_info("tiny-org/tiny-bert", revision=info.sha).sha == info.sha  # a commit hash works
        tree = {f.path for f in api.list_repo_tree("tiny-org/tiny-set", repo_type="dataset", recursive=True)}
        assert tree == {"data", "data/train-00000-of-00001.parquet"}, tree
        paths = api.get_paths_info("tiny-org/tiny-set", ["data", "nothing.txt"], repo_type="dataset")
        assert [p.path for p in paths] == ["data"], paths
        print("ok")
        """, tmp_path)
    assert out.strip() == "ok"


@pytest.mark.parametrize("path, status, code", [
    ("/tiny-org/tiny-bert/resolve/main/tokenizer.json", 404, "EntryNotFound"),
    ("/tiny-org/no-such-model/resolve/main/config.json", 404, "RepoNotFound"),
    ("/tiny-org/tiny-bert/resolve/v9/config.json", 404, "RevisionNotFound"),
    ("/tiny-org/tiny-bert/resolve/main/../../tiny-set/main/config.json", 404, "EntryNotFound"),
    ("/api/datasets/tiny-org/no-such-set", 404, "RepoNotFound"),
    ("/api/datasets/tiny-org/tiny-set/tree/main/data/../../../..", 404, "EntryNotFound"),
])
def test_missing_files_repositories_and_revisions_get_the_hub_error_codes(hub, path, status, code):
    with pytest.raises(HTTPError) as error:
        urllib.request.urlopen(hub[1] + path)
    assert (error.value.code, error.value.headers["X-Error-Code"]) == (status, code)


def test_a_file_answers_with_commit_etag_size_and_byte_ranges(hub):
    url = hub[1] + "/tiny-org/tiny-bert/resolve/main/config.json"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as head:
        headers = head.headers
    assert len(headers["X-Repo-Commit"]) == 40 and headers["ETag"].startswith('"')
    with urllib.request.urlopen(url) as response:
        body = response.read()
    assert int(headers["Content-Length"]) == len(body) and body.startswith(b"{")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=1-4"})) as part:
        assert (part.status, part.read()) == (206, body[1:5])


@pytest.mark.parametrize("root, port, message", [
    ("no/such/folder", 0, "hub folder"), (".", 0, "neither models/ nor datasets/"), (None, -1, "port")])
def test_serve_checks_its_arguments(tmp_path, root, port, message):
    if root is None:
        (tmp_path / "models").mkdir()
    with pytest.raises(ValueError, match=message):
        serve(tmp_path / root if root else tmp_path, port=port)


def test_the_hub_lists_its_repositories_with_bare_and_org_ids(hub):
    assert hub[0].hub.repos() == {"tiny-org/tiny-bert": "model", "tiny-bert-bare": "model",
                                  "tiny-org/tiny-set": "dataset"}


def test_the_command_line_serves_a_folder(hub):
    root = hub[0].hub.root
    process = subprocess.Popen([sys.executable, "-m", "homl16.localhub", str(root), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"Serving 3 repositories from {root} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "/api/datasets/tiny-org/tiny-set") as response:
            assert b'"id": "tiny-org/tiny-set"' in response.read()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_refused_post_leaves_a_kept_alive_connection_usable(hub):
    import http.client

    connection = http.client.HTTPConnection(hub[1].removeprefix("http://"))
    connection.request("POST", "/api/models/tiny-org/no-such-model/paths-info/main", body="paths=config.json",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert connection.getresponse().read() and connection.sock is not None
    connection.request("GET", "/api/models/tiny-org/tiny-bert")
    assert connection.getresponse().status == 200
