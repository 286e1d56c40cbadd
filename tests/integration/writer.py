"""Child process for restart and crash tests: writes answers to a store, forever or N times."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from memcache import MemCache, ThresholdPolicy  # noqa: E402

url, count = sys.argv[1], int(sys.argv[2])
cache = MemCache(url, policy=ThresholdPolicy(0.8))
i = 0
while count < 0 or i < count:
    cache.write_back(f"What is fact number {i} about the moon?", f"Fact {i}: the moon is far away.")
    i += 1
    if i == 1:
        print("ready", flush=True)
cache.close()
print("done", flush=True)
