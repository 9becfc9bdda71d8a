"""Peers on a message broker: Celery 5 (Redis, RabbitMQ; prefork and threads) and dramatiq (Redis).

Each is driven through its public API: `task.apply_async` / `group(...)` and a
worker started in-process (`app.Worker(...)`); dramatiq's `actor.send` /
`group(...).run()` and `dramatiq.Worker`. Brokers keep no table to poll, so
their workers count finished tasks in shared memory (inherited by Celery's
forked prefork children) and print the count; the bench waits for it to reach n
(bench/broker_runs.py). Every system uses only its own keys and queues:
Redis db `REDIS_DB` with a key prefix of its own (`pcqbench-w18:<system>:`;
dramatiq's namespace `pcqbench-w18-dramatiq`), and RabbitMQ queues named
`pcqbench_w18_*` on the default vhost, which the bench purges before each run
and deletes at the end. Two systems on one Redis never touch each other's keys,
so two benches may run at once (the smoke tests do, on the test workers).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bench.mixed_tasks import succeeded
from bench.systems import AsyncDefer, System, _timed_batches, _timed_loop

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "13"))
AMQP_HOST = os.environ.get("BENCH_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("BENCH_AMQP_PORT", "5672"))
PREFIX = "pcqbench-w18"
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//"
CELERY_PREFETCH_MULTIPLIER = 64
MIXED_TASK = "bench_mixed_sync"  # Celery's "Optimizing" guide: large for many short tasks

#: Finished tasks of this worker process and its forked children (set by the worker).
DONE: Any = None
#: Set by the worker process for the latency scenario: called with the job number.
RECORD: Callable[[int], None] | None = None


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _task_body(i: int) -> None:
    succeeded(i, RECORD, DONE)


def new_counter() -> Any:
    return multiprocessing.Value("q", 0)


class BrokerSystem(System):
    """A peer whose jobs live in a broker: no pending SQL, its own count and reset."""

    broker_host = REDIS_HOST
    broker_port = REDIS_PORT
    #: The broker's server process name in /proc (its CPU is counted like PostgreSQL's).
    broker_process = "redis-server"

    def install(self, dsn: str) -> None:
        """Nothing lives in PostgreSQL."""

    def reset(self) -> None:
        """Empty this system's own queues before a run."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Delete this system's own keys or queues after the run."""

    def stored(self) -> int:
        """Messages waiting in the broker."""
        raise NotImplementedError

    def preload_mixed(self, n: int) -> None:
        """The mixed workload's n messages (bench/mixed_peers.py)."""
        raise NotImplementedError

    package = "redis"

    def unavailable(self) -> str | None:
        """Why this system cannot run here (None when it can)."""
        import importlib.util

        for package in (self.package, "redis"):
            if importlib.util.find_spec(package) is None:
                return f"package {package!r} not installed (pip install -e '.[bench]')"
        if not reachable(self.broker_host, self.broker_port):
            return f"broker {self.broker_host}:{self.broker_port} not reachable"
        return None


def _redis() -> Any:
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)


def _delete_prefixed(prefix: str) -> None:
    client = _redis()
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


# -- Celery ----------------------------------------------------------------------
class Celery(BrokerSystem):
    package = "celery"
    transport = "redis"
    pool = "prefork"
    confirm = False

    @property
    def queue(self) -> str:
        return f"pcqbench_w18_{self.name.replace('-', '_')}"

    @property
    def key_prefix(self) -> str:
        """This system's Redis keys (kombu's bindings too): a reset deletes these only."""
        return f"{PREFIX}:{self.name}:"

    def app(self) -> Any:
        """A Celery app configured as Celery's docs advise for many short tasks."""
        import celery

        app = celery.Celery("pcqbench", set_as_current=False)
        options: dict[str, Any] = {}
        if self.transport == "redis":
            broker = REDIS_URL
            options["global_keyprefix"] = self.key_prefix
        else:
            broker = AMQP_URL
            if self.confirm:
                options["confirm_publish"] = True
        app.conf.update(
            broker_url=broker,
            broker_transport_options=options,
            broker_connection_retry_on_startup=True,
            task_default_queue=self.queue,
            task_default_exchange=self.queue,
            task_default_routing_key=self.queue,
            task_ignore_result=True,  # "ignore results you don't want"
            task_serializer="json",
            accept_content=["json"],
            worker_prefetch_multiplier=CELERY_PREFETCH_MULTIPLIER,
            worker_enable_remote_control=False,
            worker_send_task_events=False,
            worker_hijack_root_logger=False,
            worker_redirect_stdouts=False,
        )
        app.task(name="bench_noop")(_task_body)

        # The mixed workload (bench/mixed_peers.py): retried once, at once, on failure.
        @app.task(name=MIXED_TASK, bind=True, autoretry_for=(RuntimeError,),
                  max_retries=1, retry_kwargs={"countdown": 0}, retry_backoff=False)  # fmt: skip
        def bench_mixed(task: Any, i: int, blob: str) -> None:
            from bench import mixed_tasks

            mixed_tasks.body(i, blob, task.request.retries == 0)

        return app

    @property
    def broker_process(self) -> str:  # type: ignore[override]
        return "redis-server" if self.transport == "redis" else "beam.smp"

    def reset(self) -> None:
        if self.transport == "redis":
            _delete_prefixed(self.key_prefix)
            return
        with self.app().connection_for_write() as conn:
            with contextlib.suppress(Exception):  # not declared yet: nothing to purge
                conn.default_channel.queue_purge(self.queue)

    def cleanup(self) -> None:
        """Delete what this system created in the broker (at the end of a run)."""
        if self.transport == "redis":
            _delete_prefixed(self.key_prefix)
            return
        with self.app().connection_for_write() as conn:
            with contextlib.suppress(Exception):
                conn.default_channel.queue_delete(self.queue)
            with contextlib.suppress(Exception):
                conn.default_channel.exchange_delete(self.queue)

    def stored(self) -> int:
        if self.transport == "redis":
            return int(_redis().llen(f"{self.key_prefix}{self.queue}"))
        with self.app().connection_for_write() as conn:
            _, count, _ = conn.default_channel.queue_declare(self.queue, passive=True)
            return int(count)

    def defer_sync(self, dsn: str, n: int) -> float:
        app = self.app()
        task = app.tasks["bench_noop"]
        task.apply_async((0,))  # connect and declare outside the timing
        self.reset()
        return _timed_loop(n, lambda i: task.apply_async((i,)))

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        # Celery has no asyncio API: an async caller calls apply_async on its loop.
        app = self.app()
        task = app.tasks["bench_noop"]
        task.apply_async((-100,))
        self.reset()

        async def defer(i: int) -> None:
            task.apply_async((i,))

        yield defer

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        import celery

        app = self.app()
        task = app.tasks["bench_noop"]
        task.apply_async((0,))
        self.reset()

        async def many(ids: range) -> None:
            celery.group(task.s(i) for i in ids).apply_async()

        return await _timed_batches(n, batch, many)

    async def preload(self, dsn: str, n: int) -> None:
        await self.batch_defer(dsn, n, 1000)

    def preload_mixed(self, n: int, batch: int = 500) -> None:
        import celery

        from bench.mixed import BLOB

        task = self.app().tasks[MIXED_TASK]
        for first in range(0, n, batch):
            celery.group(task.s(i, BLOB) for i in range(first, min(n, first + batch))).apply_async()

    def run_worker(self, concurrency: int, go: Callable[[], None]) -> None:
        from celery import signals

        app = self.app()
        # The worker's consumer is up (its pool forked, connected) when this fires;
        # holding it here until "go" keeps every job unstarted until the timing starts.
        signals.worker_ready.connect(lambda **_: go(), weak=False)
        worker = app.Worker(
            pool=self.pool,
            concurrency=concurrency,
            loglevel="WARNING",
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            quiet=True,
        )
        worker.start()


class CeleryRedisPrefork(Celery):
    name = "celery-redis"


class CeleryRedisThreads(Celery):
    name = "celery-redis-threads"
    pool = "threads"


class CeleryAmqpPrefork(Celery):
    name = "celery-rabbitmq"
    transport = "amqp"
    broker_host, broker_port = AMQP_HOST, AMQP_PORT


class CeleryAmqpThreads(Celery):
    name = "celery-rabbitmq-threads"
    transport = "amqp"
    pool = "threads"
    broker_host, broker_port = AMQP_HOST, AMQP_PORT


class CeleryAmqpConfirm(Celery):
    """Publisher confirms: the defer returns once RabbitMQ has taken the message."""

    name = "celery-rabbitmq-confirm"
    transport = "amqp"
    confirm = True
    runs_worker = False  # same worker as celery-rabbitmq; only defers differ
    broker_host, broker_port = AMQP_HOST, AMQP_PORT


# -- dramatiq ----------------------------------------------------------------------
class Dramatiq(BrokerSystem):
    name = "dramatiq-redis"
    package = "dramatiq"
    namespace = f"{PREFIX}-dramatiq"

    @property
    def key_prefix(self) -> str:
        """This system's Redis keys (dramatiq's `namespace:`): a reset deletes these only."""
        return f"{self.namespace}:"

    queue = "bench"
    #: the worker also runs the mixed workload's actor (set by bench/worker_proc.py --mixed)
    with_mixed = False

    def broker(self) -> Any:
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=REDIS_URL, namespace=self.namespace)
        dramatiq.set_broker(broker)
        return broker

    def actor(self, broker: Any) -> Any:
        import dramatiq

        return dramatiq.actor(_task_body, actor_name="bench_noop", queue_name=self.queue,
                              broker=broker, max_retries=3)  # fmt: skip

    def mixed_actor(self, broker: Any) -> Any:
        """The mixed workload's actor: retried once, 1 ms later (min_backoff=0 would mean
        dramatiq's default of 15 s); its first attempt known from CurrentMessage."""
        import dramatiq
        from dramatiq.middleware import CurrentMessage

        if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
            broker.add_middleware(CurrentMessage())

        def bench_mixed(i: int, blob: str) -> None:
            from bench import mixed_tasks

            message = CurrentMessage.get_current_message()
            retries = message.options.get("retries", 0) if message is not None else 0
            mixed_tasks.body(i, blob, retries == 0)

        return dramatiq.actor(bench_mixed, actor_name=MIXED_TASK, queue_name=self.queue,
                              broker=broker, max_retries=1,
                              min_backoff=1, max_backoff=1)  # fmt: skip

    def preload_mixed(self, n: int, batch: int = 500) -> None:
        import dramatiq

        from bench.mixed import BLOB

        actor = self.mixed_actor(self.broker())
        for first in range(0, n, batch):
            dramatiq.group(
                actor.message(i, BLOB) for i in range(first, min(n, first + batch))
            ).run()

    def reset(self) -> None:
        _delete_prefixed(self.key_prefix)

    def cleanup(self) -> None:
        _delete_prefixed(self.key_prefix)

    def stored(self) -> int:
        return int(_redis().hlen(f"{self.namespace}:{self.queue}.msgs"))

    def defer_sync(self, dsn: str, n: int) -> float:
        actor = self.actor(self.broker())
        actor.send(0)
        self.reset()
        return _timed_loop(n, lambda i: actor.send(i))

    @contextlib.asynccontextmanager
    async def async_deferrer(self, dsn: str, connections: int) -> AsyncIterator[AsyncDefer]:
        actor = self.actor(self.broker())
        actor.send(-100)
        self.reset()

        async def defer(i: int) -> None:
            actor.send(i)

        yield defer

    async def batch_defer(self, dsn: str, n: int, batch: int) -> float:
        import dramatiq

        broker = self.broker()
        actor = self.actor(broker)
        actor.send(0)
        self.reset()

        async def many(ids: range) -> None:
            dramatiq.group(actor.message(i) for i in ids).run()

        return await _timed_batches(n, batch, many)

    def run_worker(self, concurrency: int, go: Callable[[], None]) -> None:
        import dramatiq

        broker = self.broker()
        self.actor(broker)
        if self.with_mixed:
            import logging

            # dramatiq logs each planned failure with its traceback (and 2 KB argument)
            logging.getLogger("dramatiq").setLevel(logging.CRITICAL)
            self.mixed_actor(broker)
        broker.client.ping()
        worker = dramatiq.Worker(broker, worker_threads=concurrency)
        go()
        worker.start()
        try:
            while True:
                time.sleep(3600)
        finally:
            worker.stop()


BROKER_SYSTEMS: dict[str, type[BrokerSystem]] = {
    cls.name: cls
    for cls in (
        CeleryRedisPrefork,
        CeleryRedisThreads,
        CeleryAmqpPrefork,
        CeleryAmqpThreads,
        CeleryAmqpConfirm,
        Dramatiq,
    )
}
