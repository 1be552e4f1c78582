"""The peer's Kafka side: one confluent-kafka consumer in a consumer group that hands each
record's value to Celery or Dramatiq (BENCH_QUEUE, see tasks.py), at least once: an offset is
stored only after its record is enqueued (`enable.auto.offset.store=false`, then
`store_offsets`), and auto-commit commits stored offsets, confluent-kafka's documented
at-least-once pattern.

Usage: consumer.py BROKERS TOPIC GROUP; runs until SIGTERM.
"""

import signal
import sys

from confluent_kafka import Consumer

import tasks

running = True


def _stop(_signum, _frame):
    global running
    running = False


def main() -> int:
    brokers, topic, group = sys.argv[1:4]
    signal.signal(signal.SIGTERM, _stop)
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.offset.store": False,
    })
    consumer.subscribe([topic])
    try:
        while running:
            # One record at a time: `poll` answers as soon as a record is there, where
            # `consume(n)` would wait for n records or its time-out.
            message = consumer.poll(0.1)
            if message is None:
                continue
            if message.error():
                print(f"consumer: {message.error()}", file=sys.stderr)
                continue
            tasks.enqueue(message.value().decode())
            consumer.store_offsets(message)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
