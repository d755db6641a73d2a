"""No secrets, no unsafe loading: scanned over every file the repository tracks."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve()

SECRET_PATTERNS = {
    "OpenAI key": r"sk-[A-Za-z0-9_-]{20,}",
    "Google API key": r"AIza[0-9A-Za-z_-]{35}",
    "Hugging Face token": r"hf_[A-Za-z0-9]{30,}",
    "GitHub token": r"gh[pousr]_[A-Za-z0-9]{36}",
    "AWS access key": r"AKIA[0-9A-Z]{16}",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "key assigned in code": r"(?i)api_key\s*=\s*[\"'][^\"'$]{8,}[\"']",
}


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in names:
        path = ROOT / name
        if path.resolve() == THIS_FILE or path.suffix not in {".py", ".ipynb", ".md", ".toml", ".yml",
                                                              ".yaml", ".txt", ".cfg", ""}:
            continue
        if path.is_file():
            yield path, path.read_text(errors="ignore")


def test_there_are_files_to_scan():
    names = [path.name for path, _ in tracked_text_files()]
    assert "README.md" in names and "pyproject.toml" in names and any(n.endswith(".ipynb") for n in names)


def test_no_secret_in_code_or_notebooks():
    found = [f"{path.relative_to(ROOT)}: {kind}" for path, text in tracked_text_files()
             for kind, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]
    assert not found, found


def test_secret_patterns_catch_planted_keys():
    planted = {"OpenAI key": "sk-" + "a1B2" * 6, "Google API key": "AIza" + "x" * 35,
               "key assigned in code": 'api_key = "' + "k" * 12 + '"'}
    for kind, key in planted.items():
        assert re.search(SECRET_PATTERNS[kind], key), kind
    assert not re.search(SECRET_PATTERNS["key assigned in code"], 'api_key = os.environ["GEMINI_API_KEY"]')


def calls(text, function):
    """The source of every call of ``function`` in ``text``, up to its matching parenthesis."""
    for match in re.finditer(re.escape(function) + r"\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        yield text[match.start():end + 1]


def test_calls_are_read_to_their_closing_parenthesis():
    text = 'x = torch.load(path(a, b), map_location="cpu", weights_only=True)\ntorch.load(f)'
    assert list(calls(text, "torch.load")) == [
        'torch.load(path(a, b), map_location="cpu", weights_only=True)', "torch.load(f)"]


def test_checkpoints_load_weights_only_and_no_remote_code_runs():
    for path, text in tracked_text_files():
        for call in calls(text, "torch.load"):
            assert "weights_only=True" in call, f"{path.relative_to(ROOT)}: {call}"
        assert "trust_remote_code=True" not in text, path.relative_to(ROOT)
