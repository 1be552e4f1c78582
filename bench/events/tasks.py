"""Celery and Dramatiq tasks for the events benchmark: one per Kafka record.

Each task counts itself done (INCR bench:done) and, for a record that carries "sent" (the
producer's wall clock), pushes its start latency to bench:latency, as the chorus side's
`clock` function reports its start time. Redis is BENCH_REDIS_URL (broker db 0, results db 1).
BENCH_QUEUE picks the library: "celery" or "dramatiq".
"""

import json
import os
import time

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
QUEUE = os.environ.get("BENCH_QUEUE", "celery")
DONE_KEY = "bench:done"
LATENCY_KEY = "bench:latency"

_redis = None


def _conn():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(f"{URL}/0")
    return _redis


def _handle(value: str):
    started = time.time()
    record = json.loads(value)
    pipe = _conn().pipeline()
    if "sent" in record:
        pipe.rpush(LATENCY_KEY, repr(started - record["sent"]))
    pipe.incr(DONE_KEY)
    pipe.execute()
    return started


if QUEUE == "celery":
    from celery import Celery

    app = Celery("tasks", broker=f"{URL}/0", backend=f"{URL}/1")
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

    @app.task(name="record")
    def record(value):
        return _handle(value)

    def enqueue(value: str):
        record.delay(value)
else:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=f"{URL}/0")
    broker.add_middleware(Results(backend=RedisBackend(url=f"{URL}/1")))
    dramatiq.set_broker(broker)

    @dramatiq.actor(store_results=True)
    def record(value):
        return _handle(value)

    def enqueue(value: str):
        record.send(value)
