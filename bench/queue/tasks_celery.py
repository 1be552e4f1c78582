"""Celery tasks for the queue benchmark: a no-op, and one that records its start latency.

The broker and result backend are the Redis named by BENCH_REDIS_URL (databases 0 and 1).
"""

import os
import time

import redis
from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
LATENCY_KEY = "bench:latency"

app = Celery("tasks_celery", broker=f"{URL}/0", backend=f"{URL}/1")
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

_redis = None


def _conn():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(f"{URL}/0")
    return _redis


@app.task(name="noop")
def noop():
    return None


@app.task(name="clock")
def clock(sent):
    started = time.time()
    _conn().rpush(LATENCY_KEY, repr(started - sent))
    return started
