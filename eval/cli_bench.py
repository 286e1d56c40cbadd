"""How long `memcache ask` takes in a fresh process, beside a bare `import numpy, sqlalchemy`.

Why: a command-line user pays the imports on every call. An exact repeat needs neither torch,
nor sentence-transformers, nor LiteLLM; a miss needs the encoder and LiteLLM. The three are
timed as a user runs them (the `memcache` script, a new process each time), in alternating
rounds so that a busy minute weighs on each alike, and reported as medians and ratios.
`memcache bench` includes this section; `python -m memcache.eval.cli_bench` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = "import numpy, sqlalchemy"
MODEL = "openai/bench-cli"
EXACT_MAX_S, MISS_MAX_S, EXACT_MAX_VS_BARE = 1.5, 4.0, 2.5  # the targets of the fast-CLI issue
HEAVY = ("torch", "sentence_transformers", "litellm")


def memcache_command() -> list[str]:
    """The installed `memcache` script beside this interpreter, else `python -m memcache.cli`."""
    script = Path(sys.executable).with_name("memcache")
    if script.exists():
        return [str(script)]
    found = shutil.which("memcache")
    return [found] if found else [sys.executable, "-m", "memcache.cli"]


def _user_env(folder: Path) -> dict[str, str]:
    """A user's environment with a new SQLite store in `folder`, offline."""
    return {**os.environ, "MEMCACHE_DATABASE_URL": f"sqlite:///{folder / 'cli.db'}", "HF_HUB_OFFLINE": "1"}


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds, done


def _outcome(done: subprocess.CompletedProcess) -> str:
    """The outcome `memcache ask` printed on stderr ("[hit ...", "[miss ...")."""
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("[")), "")
    return line[1:].split(" ", 1)[0]


def cli_startup(runs: int = 10, workdir: str | None = None) -> dict:
    """Medians of `runs` fresh processes each: bare imports, an exact repeat, a miss with a mock answer.

    Each miss asks a question the store has not seen (its answer is then stored, so the next
    round's exact repeat is of a real entry). Untimed first: the question the exact repeats ask
    is stored from this process (which also prepares what a first run prepares once, the ONNX
    export), and one exact repeat records which heavy modules it imports (`exact_repeat_imports`).
    """
    from memcache.cache import MemCache

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        env = _user_env(Path(tmp))
        ask = [*memcache_command(), "ask", "--model", MODEL, "--mock-response", "a stored answer"]
        stored = "How many moons does Jupiter have?"
        with MemCache(env["MEMCACHE_DATABASE_URL"], strong_model=MODEL) as cache:
            cache.write_back([{"role": "user", "content": stored}], "a stored answer", model=MODEL)
        heavy = heavy_imports_of_exact_repeat(env, stored)
        times: dict[str, list[float]] = {"bare": [], "exact": [], "miss": []}
        for i in range(runs):
            times["bare"].append(_timed([sys.executable, "-c", BARE], env)[0])
            seconds, done = _timed([*ask, stored], env)
            if _outcome(done) != "hit":
                raise RuntimeError(f"the exact repeat was not served: {done.stderr[-300:]}")
            times["exact"].append(seconds)
            seconds, done = _timed([*ask, f"Which river runs through city number {i} of the survey?"], env)
            if _outcome(done) == "hit":
                raise RuntimeError(f"the new question was served from memory: {done.stderr[-300:]}")
            times["miss"].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "runs": runs,
        "bare_import_s": medians["bare"],
        "exact_repeat_s": medians["exact"],
        "miss_mock_s": medians["miss"],
        "exact_vs_bare": medians["exact"] / medians["bare"],
        "miss_vs_bare": medians["miss"] / medians["bare"],
        "exact_repeat_imports": heavy,
        "samples_s": times,
    }


def heavy_imports_of_exact_repeat(env: dict[str, str], question: str) -> list[str]:
    """Which of torch, sentence-transformers and LiteLLM serving `question` again imported (should
    be none): the CLI's entry point run in a fresh interpreter that then lists what it loaded."""
    code = (
        "import json, sys\nfrom memcache.cli import main\n"
        f"main(['ask', {question!r}, '--model', {MODEL!r}, '--mock-response', 'unused'])\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    _, done = _timed([sys.executable, "-c", code], env)
    if _outcome(done) != "hit":
        raise RuntimeError(f"the exact repeat was not served: {done.stderr[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_targets(result: dict) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return [
        f"- `memcache ask` exact repeat, median of {result['runs']} fresh processes, under {EXACT_MAX_S} s: "
        f"{result['exact_repeat_s']:.2f} s: {verdict(result['exact_repeat_s'] < EXACT_MAX_S)}",
        f'- exact repeat under {EXACT_MAX_VS_BARE}x a bare `python -c "{BARE}"` ({result["bare_import_s"]:.2f} s): '
        f"{result['exact_vs_bare']:.2f}x: {verdict(result['exact_vs_bare'] < EXACT_MAX_VS_BARE)}",
        f"- `memcache ask` miss with `--mock-response` under {MISS_MAX_S} s: {result['miss_mock_s']:.2f} s "
        f"({result['miss_vs_bare']:.1f}x the bare imports): {verdict(result['miss_mock_s'] < MISS_MAX_S)}",
        f"- an exact repeat imports none of {', '.join(HEAVY)}: "
        f"{verdict(not result['exact_repeat_imports'])}"
        + (f" (it imported {', '.join(result['exact_repeat_imports'])})" if result["exact_repeat_imports"] else ""),
    ]


def markdown(result: dict) -> list[str]:
    return [
        "## The command line, from a fresh process",
        "",
        f"Medians of {result['runs']} rounds, each a new process per command, the three alternating "
        "(`memcache ask --mock-response`, SQLite store, the ONNX export already prepared):",
        "",
        "| command | median s | vs bare imports |",
        "|---|---|---|",
        f'| `python -c "{BARE}"` | {result["bare_import_s"]:.2f} | 1.00x |',
        f"| `memcache ask`, exact repeat (served) | {result['exact_repeat_s']:.2f} | {result['exact_vs_bare']:.2f}x |",
        f"| `memcache ask`, miss (mock answer, written back) | {result['miss_mock_s']:.2f} | "
        f"{result['miss_vs_bare']:.2f}x |",
        "",
        *cli_targets(result),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="fresh processes per command (median)")
    parser.add_argument("--json", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    result = cli_startup(args.runs)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(markdown(result)))
    return result


if __name__ == "__main__":
    main()
