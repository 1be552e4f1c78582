"""RQ job functions for the queue benchmark: a no-op, and one that records its start latency.

Workers import this module by name (bench/queue is on PYTHONPATH); Redis is BENCH_REDIS_URL db 0.
"""

import os
import time

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
LATENCY_KEY = "bench:latency"

_redis = None


def _conn():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(f"{URL}/0")
    return _redis


def noop():
    return None


def clock(sent):
    started = time.time()
    _conn().rpush(LATENCY_KEY, repr(started - sent))
    return started
