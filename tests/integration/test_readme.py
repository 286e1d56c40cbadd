"""Every example block of README.md runs as written; the reader's only setup is `API_BASE`.

Python blocks run in order in one namespace (the README reads top to bottom); `memcache ...`
lines of shell blocks run the command line in-process; a heredoc writes its file; a command
ending in `&` runs in the background. The install and test lines are what `.ci/run` runs (CI
proves them). `memcache eval`, `calibrate`, `bench` and the validation module need the data
folder and minutes: here they must parse, and tests/integration/test_eval.py and test_bench.py
run them on small subsets.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import threading
import time
from pathlib import Path

import httpx
import litellm
import pytest
from stub_llm import StubLLM

from memcache import cli
from memcache.eval import ceiling, validation, workers

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"```(python|bash)\n(.*?)```", re.DOTALL)
MEASURING = ("eval", "calibrate", "bench")


def readme_blocks() -> list[tuple[str, str]]:
    return FENCE.findall((ROOT / "README.md").read_text())


def shell_lines(code: str):
    """(command line, heredoc body or None) of a shell block, comments and continuations joined."""
    lines = iter(code.splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = re.search(r"<<'(\w+)'", line)
        if heredoc:
            body = []
            for part in lines:
                if part.strip() == heredoc.group(1):
                    break
                body.append(part)
            yield line, "\n".join(body) + "\n"
        else:
            yield line, None


def words(line: str) -> list[str]:
    return shlex.split(os.path.expandvars(line), comments=True)


def run_cli(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as done:  # --version, argparse errors
        return int(done.code or 0)


def wait_for(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def run_shell_block(code: str) -> None:
    for line, heredoc in shell_lines(code):
        argv = words(line)
        if heredoc is not None:  # cat > FILE <<'TAG'
            Path(argv[argv.index(">") + 1]).write_text(heredoc)
        elif argv[:2] == ["pip", "install"] or argv[:3] == ["python", "-m", "pytest"]:
            ci = (ROOT / ".ci" / "run").read_text().replace(" -q", "")
            for command in line.split("#")[0].strip().split(" && "):
                assert command in ci, f"README's `{command}` is not what .ci/run runs"
        elif argv[:3] == ["python", "-m", "memcache.eval.validation"]:
            assert (
                validation.build_parser().parse_args(argv[3:]).data.endswith(".jsonl")
            )  # parses (its streams: test_validation_streams)
        elif argv[:3] == ["python", "-m", "memcache.eval.workers"]:
            assert workers.build_parser().parse_args(argv[3:]).data.endswith(".jsonl")  # run by test_multi_instance
        elif argv[:3] == ["python", "-m", "memcache.eval.ceiling"]:
            assert ceiling.build_parser().parse_args(argv[3:]).data.endswith(".jsonl")  # run by test_ceiling
        elif argv[0] == "memcache" and argv[1] in MEASURING:
            cli.build_parser().parse_args(argv[1:])  # parses; run on subsets by test_eval / test_bench
        elif argv[0] == "memcache" and argv[-1] == "&":
            threading.Thread(target=run_cli, args=(argv[1:-1],), daemon=True).start()
            wait_for("http://127.0.0.1:8000/healthz")
        else:
            assert argv[0] == "memcache", f"unknown README command: {line}"
            assert run_cli(argv[1:]) in (0, 1), line  # 1: `invalidate` of an id that is not there


@pytest.fixture
def reader(tmp_path, monkeypatch, stub_llm):
    """A new user's shell: an empty folder, API_BASE set, no OpenAI key; a model server on 8001."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("API_BASE", stub_llm.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MEMCACHE_DEMO_QUERIES", "200")  # `memcache demo` as written, on a shorter stream
    monkeypatch.setattr(litellm, "cache", litellm.cache)  # the README sets it; later tests start without
    upstream = StubLLM(port=8001).start()
    yield tmp_path
    upstream.stop()


def test_every_readme_example_runs_as_written(reader, capsys):
    blocks = readme_blocks()
    assert len(blocks) >= 10 and {lang for lang, _ in blocks} == {"python", "bash"}
    namespace: dict = {"__name__": "readme"}
    for number, (lang, code) in enumerate(blocks, 1):
        try:
            if lang == "python":
                exec(compile(code, f"README block {number}", "exec"), namespace)
            else:
                run_shell_block(code)
        except BaseException as exc:
            raise AssertionError(f"README block {number} ({lang}) failed: {exc!r}\n{code}") from exc
    out = capsys.readouterr().out
    assert "served from memory" in out  # the demo's summary
    assert "miss" in out and "hit 1.0000" in out  # the proxy's second answer came from memory
    assert re.search(r"lookups\s+2\b", out) and re.search(r"hits\s+1\b", out)  # stats after two asks
