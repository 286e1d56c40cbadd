"""The `memcache` command: demo, ask, stats, forget, invalidate, export, import, snapshot, serve, eval, calibrate, bench.

Sits on top of everything (it may import eval); the engine never imports it. Heavy modules
(the embedding model, LiteLLM) are imported by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

from memcache.errors import MemcacheError

MODEL_ENV = "MEMCACHE_STRONG_MODEL"
CHEAP_MODEL_ENV = "MEMCACHE_CHEAP_MODEL"
JUDGE_MODEL_ENV = "MEMCACHE_JUDGE_MODEL"


def _version() -> str:
    try:
        return version("memcache")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "unknown"


def _open(args: argparse.Namespace, **overrides):
    from memcache.cache import MemCache

    return MemCache(
        args.database_url,
        embedding_model=getattr(args, "embedding_model", None),
        strong_model=getattr(args, "model", None),
        max_false_hit_rate=getattr(args, "max_false_hit_rate", 0.02),
        calibration=getattr(args, "calibration", None),
        snapshot=getattr(args, "snapshot", None),
        progress=True,
        **overrides,
    )


def cmd_ask(args: argparse.Namespace) -> int:
    """Looks up first: a hit is printed without importing LiteLLM (the slowest import left on
    this path); anything else goes on through the completion flow from that lookup."""
    from memcache import calls, flow

    if not args.model:
        print(f"memcache: error: no model: pass --model provider/name or set {MODEL_ENV}", file=sys.stderr)
        return 2
    kwargs = {k: v for k, v in (("api_base", args.api_base), ("api_key", args.api_key)) if v}
    if args.mock_response is not None:
        kwargs["mock_response"] = args.mock_response
    messages = [{"role": "user", "content": args.question}]
    judge = None
    if args.judge_model:
        from memcache.judge import LLMJudge

        judge = LLMJudge(args.judge_model, **{k: v for k, v in kwargs.items() if k != "mock_response"})
    with _open(args, cheap_model=args.cheap_model, judge=judge) as cache:
        result = cache.lookup(messages, model=args.model, tenant=args.tenant, **kwargs)
        if result.hit is not None:
            answer, info = result.hit.answer, calls.info_of(result, served=result.hit)
        else:
            run = calls.completion_flow(
                cache, messages, args.model, args.tenant, kwargs, asynchronous=False, result=result
            )
            response = flow.run(run)
            answer, info = response.choices[0].message.content, calls.cache_info(response)
        print(answer)
        if info is not None:
            sim = "-" if info.similarity is None else f"{info.similarity:.3f}"
            print(
                f"[{info.outcome} path={info.path} similarity={sim} confidence={info.confidence:.3f} "
                f"entry={info.entry_id}]",
                file=sys.stderr,
            )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from memcache.types import saving_micro_usd

    with _open(args) as cache:
        stats = asdict(cache.stats())
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    lifetime = stats.pop("lifetime")
    counters = ("lookups", "hits", "exact_hits", "misses", "audits", "write_backs", "rejected_write_backs",
                "strong_calls", "spend_micro_usd", "cheap_calls", "cheap_answers", "cheap_spend_micro_usd",
                "strong_tokens", "cheap_tokens", "judge_calls", "judge_spend_micro_usd", "judge_tokens",
                "unpriced_calls", "merged_entries")  # fmt: skip
    print("store (every process, since it was created)")
    for name in ("entries", "keys", "labels"):
        print(f"  {name:28s} {stats.pop(name)}")
    for name in counters:
        print(f"  {name:28s} {lifetime.get(name, 0)}")
    total = {name: lifetime.get(name, 0) for name in counters}
    saving = saving_micro_usd(total["lookups"], total["strong_calls"], total["spend_micro_usd"],
                              total["cheap_spend_micro_usd"], total["judge_spend_micro_usd"])  # fmt: skip
    unpriced = f" ({total['unpriced_calls']} unpriced calls: count their tokens)" if total["unpriced_calls"] else ""
    print(f"  {'saving_micro_usd':28s} {'- (no priced strong call yet)' if saving is None else saving}{unpriced}")
    print("policy")
    for name in ("max_false_hit_rate", "estimated_false_hit_rate", "target", "claim_ratio", "shifts_detected",
                 "shift_hold_remaining"):  # fmt: skip
        print(f"  {name:28s} {stats.pop(name)}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        deleted = cache.forget(tenant=args.tenant)
    print(
        f"deleted {deleted} entries of " + ("the default tenant" if args.tenant is None else f"tenant {args.tenant!r}")
    )
    return 0


def cmd_invalidate(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        found = cache.invalidate(args.entry_id)
    print(f"entry {args.entry_id} {'deleted' if found else 'not found'}")
    return 0 if found else 1


def cmd_export(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        print(f"exported {cache.export_jsonl(args.file, progress=True)} entries to {args.file}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        print(f"imported {cache.import_jsonl(args.file, progress=True)} query keys from {args.file}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        written = cache.save_snapshot(args.file)
    print(f"index snapshot written to {written}" if written else "nothing is indexed yet: no snapshot written")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from memcache.adapters.proxy import serve

    serve(args.config, args.host, args.port, args.workers)
    return 0


def _store_options(*, snapshot: bool = False, policy: bool = False, embedding: bool = False) -> argparse.ArgumentParser:
    """The options a command that opens the store takes: always the store, the rest where they matter."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--database-url",
        default=os.environ.get("MEMCACHE_DATABASE_URL", "sqlite:///memcache.db"),
        help="SQLAlchemy URL of the store (env MEMCACHE_DATABASE_URL; default sqlite:///memcache.db)",
    )
    if embedding:
        options.add_argument(
            "--embedding-model",
            default=None,
            help="sentence-transformers name or path (default: the packaged all-MiniLM-L6-v2)",
        )
    if policy:
        options.add_argument(
            "--max-false-hit-rate", type=float, default=0.02, help="bound on wrong hits / hits (default 0.02)"
        )
        options.add_argument(
            "--calibration", default=None, help="start the policy from this file of `memcache calibrate`"
        )
    if snapshot:
        options.add_argument(
            "--snapshot",
            default=os.environ.get("MEMCACHE_SNAPSHOT"),
            help="index snapshot to start from and rewrite on exit (env MEMCACHE_SNAPSHOT)",
        )
    return options


def _add_ask(sub) -> None:
    ask = sub.add_parser(
        "ask",
        parents=[_store_options(snapshot=True, policy=True, embedding=True)],
        help="answer a question from memory, or ask the strong model and remember",
    )
    ask.add_argument("question", help="the question, as the user would ask it")
    ask.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV),
        help=f"LiteLLM model name, e.g. openai/gpt-4o-mini (env {MODEL_ENV})",
    )
    ask.add_argument(
        "--cheap-model",
        default=os.environ.get(CHEAP_MODEL_ENV),
        help="LiteLLM model that may answer from the nearest stored answers before the strong model is paid "
        f"(env {CHEAP_MODEL_ENV}; default: none)",
    )
    ask.add_argument(
        "--judge-model",
        default=os.environ.get(JUDGE_MODEL_ENV),
        help="LiteLLM model that says whether a paid answer agrees with the nearest stored one, for answers "
        f"worded freely (env {JUDGE_MODEL_ENV}; default: none, answers must be equal text)",
    )
    ask.add_argument("--tenant", default=None, help="whose memory this is: tenants never share answers (default: none)")
    ask.add_argument("--api-base", default=None, help="the model server's URL, e.g. http://127.0.0.1:8000/v1")
    ask.add_argument(
        "--api-key", default=None, help="the model server's key (default: the provider's variable, e.g. OPENAI_API_KEY)"
    )
    ask.add_argument(
        "--mock-response", default=None, help="answer with this text instead of calling a model (no network)"
    )
    ask.set_defaults(func=cmd_ask)


def _add_store_commands(sub) -> None:
    stats = sub.add_parser(
        "stats", parents=[_store_options()], help="entries, keys, labels, hits and the policy's estimate"
    )
    stats.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    stats.set_defaults(func=cmd_stats)

    forget = sub.add_parser("forget", parents=[_store_options(snapshot=True)], help="delete everything of one tenant")
    whose = forget.add_mutually_exclusive_group(required=True)
    whose.add_argument("--tenant", help="the tenant whose entries are deleted")
    whose.add_argument(
        "--default-tenant",
        dest="tenant",
        action="store_const",
        const=None,
        help="delete the entries of requests that named no tenant",
    )
    forget.set_defaults(func=cmd_forget)

    invalidate = sub.add_parser("invalidate", parents=[_store_options(snapshot=True)], help="delete one entry by id")
    invalidate.add_argument("entry_id", type=int, help="the entry's id (CacheInfo.entry_id, `memcache export`)")
    invalidate.set_defaults(func=cmd_invalidate)

    export = sub.add_parser("export", parents=[_store_options()], help="write every entry to a JSONL file")
    export.add_argument("file", help="the JSONL file to write")
    export.set_defaults(func=cmd_export)

    importer = sub.add_parser(
        "import",
        parents=[_store_options(embedding=True)],
        help="add the entries of an exported JSONL file (queries re-embedded)",
    )
    importer.add_argument("file", help="a file written by `memcache export`")
    importer.set_defaults(func=cmd_import)

    snapshot = sub.add_parser(
        "snapshot", parents=[_store_options()], help="write the index to a file for fast restarts"
    )
    snapshot.add_argument("file", help="the snapshot file to write (pass it later as --snapshot or snapshot=)")
    snapshot.set_defaults(func=cmd_snapshot)


def _add_serve(sub) -> None:
    server = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible caching proxy",
        description="Run the OpenAI-compatible caching proxy. Without --config it is an open proxy: it serves every "
        "client and forwards any model name with this server's credentials. Configure [keys] and [models] for "
        "anything but a trusted network.",
    )
    server.add_argument("--config", default=None, help="TOML file: database_url, models, keys (see README: the proxy)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    server.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that share the port and the store, each with its own model (default 1)",
    )
    server.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memcache", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"memcache {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ask(sub)
    _add_store_commands(sub)
    _add_serve(sub)
    from memcache.eval.bench import add_bench_command
    from memcache.eval.commands import add_eval_commands
    from memcache.eval.demo import add_demo_command

    add_demo_command(sub)
    add_eval_commands(sub)
    add_bench_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MemcacheError as exc:
        print(f"memcache: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
