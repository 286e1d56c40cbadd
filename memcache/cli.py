"""The `memcache` command: ask, stats, forget, invalidate, export, import, snapshot, serve, eval, calibrate, bench.

Sits on top of everything (it may import eval); the engine never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from memcache.errors import MemcacheError


def _open(args: argparse.Namespace, **overrides):
    from memcache.cache import MemCache

    return MemCache(
        args.database_url,
        embedding_model=args.embedding_model,
        strong_model=getattr(args, "model", None),
        max_false_hit_rate=args.max_false_hit_rate,
        calibration=args.calibration,
        snapshot=args.snapshot,
        progress=True,
        **overrides,
    )


def cmd_ask(args: argparse.Namespace) -> int:
    import litellm

    from memcache.cache import cache_info

    litellm.suppress_debug_info = True

    kwargs = {k: v for k, v in (("api_base", args.api_base), ("api_key", args.api_key)) if v}
    if args.mock_response is not None:
        kwargs["mock_response"] = args.mock_response
    with _open(args) as cache:
        response = cache.completion(messages=[{"role": "user", "content": args.question}], tenant=args.tenant, **kwargs)
        info = cache_info(response)
        print(response.choices[0].message.content)
        if info is not None:
            sim = "-" if info.similarity is None else f"{info.similarity:.3f}"
            print(f"[{info.outcome} similarity={sim} confidence={info.confidence:.3f} entry={info.entry_id}]", file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        stats = cache.stats()
    if args.json:
        print(json.dumps(asdict(stats), indent=2))
    else:
        for name, value in asdict(stats).items():
            print(f"{name:28s} {value}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        deleted = cache.forget(tenant=args.tenant)
    print(f"deleted {deleted} entries of " + ("the default tenant" if args.tenant is None else f"tenant {args.tenant!r}"))
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

    serve(args.config, args.host, args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memcache", description=__doc__.splitlines()[0])
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--database-url",
        default=os.environ.get("MEMCACHE_DATABASE_URL", "sqlite:///memcache.db"),
        help="SQLAlchemy URL of the store (env MEMCACHE_DATABASE_URL; default sqlite:///memcache.db)",
    )
    store.add_argument("--embedding-model", default=None, help="sentence-transformers name or path")
    store.add_argument("--max-false-hit-rate", type=float, default=0.02, help="bound on wrong hits / hits")
    store.add_argument("--calibration", default=None, help="calibration file from `memcache calibrate`")
    store.add_argument(
        "--snapshot", default=os.environ.get("MEMCACHE_SNAPSHOT"),
        help="index snapshot to start from and rewrite on exit (env MEMCACHE_SNAPSHOT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", parents=[store], help="answer a question from memory, or escalate and remember")
    ask.add_argument("question")
    ask.add_argument("--model", default=os.environ.get("MEMCACHE_STRONG_MODEL"), help="LiteLLM model (env MEMCACHE_STRONG_MODEL)")
    ask.add_argument("--tenant", default=None)
    ask.add_argument("--api-base", default=None)
    ask.add_argument("--api-key", default=None)
    ask.add_argument("--mock-response", default=None, help="LiteLLM mock_response (no network)")
    ask.set_defaults(func=cmd_ask)

    stats = sub.add_parser("stats", parents=[store], help="entries, keys, labels and the policy's estimate")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    forget = sub.add_parser("forget", parents=[store], help="delete everything of one tenant")
    whose = forget.add_mutually_exclusive_group(required=True)
    whose.add_argument("--tenant", help="the tenant whose entries are deleted")
    whose.add_argument(
        "--default-tenant", dest="tenant", action="store_const", const=None,
        help="delete the entries of requests that named no tenant",
    )
    forget.set_defaults(func=cmd_forget)

    invalidate = sub.add_parser("invalidate", parents=[store], help="delete one entry by id")
    invalidate.add_argument("entry_id", type=int)
    invalidate.set_defaults(func=cmd_invalidate)

    export = sub.add_parser("export", parents=[store], help="write every entry to a JSONL file")
    export.add_argument("file")
    export.set_defaults(func=cmd_export)

    importer = sub.add_parser("import", parents=[store], help="add the entries of an exported JSONL file")
    importer.add_argument("file")
    importer.set_defaults(func=cmd_import)

    snapshot = sub.add_parser("snapshot", parents=[store], help="write the index to a file for fast restarts")
    snapshot.add_argument("file")
    snapshot.set_defaults(func=cmd_snapshot)

    server = sub.add_parser("serve", help="run the OpenAI-compatible caching proxy")
    server.add_argument("--config", default=None, help="TOML file: database_url, models, keys")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.set_defaults(func=cmd_serve)

    from memcache.eval.bench import add_bench_command
    from memcache.eval.commands import add_eval_commands

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
