"""Dramatiq actors for the queue benchmark: a no-op, and one that records its start latency.

The broker is the Redis named by BENCH_REDIS_URL db 0; results (the completion record the
benchmark counts) go to db 1 through the Results middleware.
"""

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
LATENCY_KEY = "bench:latency"

broker = RedisBroker(url=f"{URL}/0")
broker.add_middleware(Results(backend=RedisBackend(url=f"{URL}/1")))
dramatiq.set_broker(broker)

_redis = None


def _conn():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(f"{URL}/0")
    return _redis


@dramatiq.actor(store_results=True)
def noop():
    return None


@dramatiq.actor(store_results=True)
def clock(sent):
    started = time.time()
    _conn().rpush(LATENCY_KEY, repr(started - sent))
    return started
