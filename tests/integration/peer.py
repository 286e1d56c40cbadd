"""Another memcache process for multi-instance tests: reads commands from stdin, one per line.

write <tenant>|<question>|<answer>   -> "ok <entry id>"
invalidate <entry id>                -> "ok <True|False>"
forget <tenant>                      -> "ok <entries deleted>"
lookup <tenant>|<question>           -> "ok <served answer, or None>"
pay <tenant>|<question>|<answer>     -> "ok <entry id>": a lookup, then its answer paid for (a label)
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from memcache import MemCache, ThresholdPolicy  # noqa: E402

cache = MemCache(sys.argv[1], policy=ThresholdPolicy(0.8))
cache.lookup("warm up")  # load the model and the store before saying ready
print("ready", flush=True)
for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "write":
        tenant, question, answer = argument.split("|")
        print(f"ok {cache.write_back(question, answer, tenant=tenant).id}", flush=True)
    elif command == "invalidate":
        print(f"ok {cache.invalidate(int(argument))}", flush=True)
    elif command == "forget":
        print(f"ok {cache.forget(tenant=argument)}", flush=True)
    elif command == "pay":
        tenant, question, answer = argument.split("|")
        print(f"ok {cache.write_back(cache.lookup(question, tenant=tenant), answer).id}", flush=True)
    elif command == "lookup":
        tenant, question = argument.split("|")
        hit = cache.lookup(question, tenant=tenant).hit
        print(f"ok {None if hit is None else hit.answer}", flush=True)
cache.close()
