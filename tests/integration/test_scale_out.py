"""Three gateway instances on one broker through the shared subscription (docs/operations.md).

Each instance is a `tgw gateway run` process with its own broker account, as on three machines.
Ingest splits across them; one killed with SIGKILL under load loses nothing: Mosquitto keeps
dealing its turn of the messages to its persistent session while it is away, and it gets them
when it is started again with the same account. Commands are dispatched by whichever instance
is up, whichever instance's API took them; each reaches one final state, also when the car's
answer was dealt to the killed instance's session and arrives only after its restart (then the
command has timed out and the late answer changes nothing).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench._instances import GatewayInstance, metric_sum
from gateway.auth import Role
from gateway.devstack import BrokerAccount, MosquittoBroker, random_vin
from schemas import TopicKind
from tests.integration.command_support import (
    make_keys,
    make_token,
    registered_car,
    wait_status,
)
from tests.integration.ingest_support import WAIT_S, Car, fetch, now_ms, telemetry

INSTANCES = 3
CARS = 6
PER_CAR = 400
RECEIVED = "tgw_ingest_messages_received_total"
DISPATCHED = 'tgw_commands_dispatch_total{outcome="sent"}'
FINAL = {"executed", "verified", "rejected", "failed", "expired", "timed_out"}
SUCCESS = {"executed", "verified"}


def car_account(broker: MosquittoBroker) -> BrokerAccount:
    vin = random_vin()
    return BrokerAccount(vin, broker.add_car(vin), broker.host, broker.port)


@contextmanager
def instances(
    broker: MosquittoBroker,
    dsn: str,
    tmp_path: Path,
    key_file: Path,
    more_env: dict[str, str] | None = None,
) -> Iterator[list[GatewayInstance]]:
    env = (more_env or {}) | {
        "TGW_COMMANDS__SIGNING_KEY_FILE": str(key_file),
        "TGW_COMMANDS__SWEEP_INTERVAL_S": "0.2",
        "TGW_INGEST__BATCH_MAX_DELAY_MS": "50",
        "TGW_DATABASE__POOL_MIN_SIZE": "1",
        "TGW_DATABASE__POOL_MAX_SIZE": "4",
    }
    running = []
    for i in range(1, INSTANCES + 1):
        username = f"tgw-scale-{i}"
        account = BrokerAccount(username, broker.add_gateway(username), broker.host, broker.port)
        running.append(
            GatewayInstance(
                i,
                account,
                broker=(broker.host, broker.port),
                dsn=dsn,
                log_file=tmp_path / f"gateway-{i}.log",
                extra_env=env,
            )
        )
    try:
        for instance in running:
            instance.start(wait=False)
        for instance in running:
            instance.wait_healthy(WAIT_S)
        yield running
    finally:
        for instance in running:
            instance.close()


def publish_all(cars: list[Car], done: threading.Event, paused: threading.Event) -> None:
    """Every car publishes PER_CAR samples, in turn, QoS 1 (each waits for its PUBACK)."""
    ts = now_ms()
    try:
        for seq, car in itertools.product(range(PER_CAR), cars):
            while paused.is_set():
                time.sleep(0.01)
            car.publish(TopicKind.TELEMETRY, telemetry(car.vin, seq, ts + seq))
    finally:
        done.set()


async def stored(dsn: str, vins: list[str]) -> int:
    rows = await fetch(dsn, "SELECT count(*) FROM telemetry WHERE vin = ANY(%s)", (vins,))
    return int(rows[0][0])


async def wait_until(what: str, check: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_ingest_splits_and_one_instance_killed_under_load_loses_nothing(
    private_broker: MosquittoBroker,
    migrated_database: str,
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path / "keys")
    cars = [Car(car_account(private_broker)) for _ in range(CARS)]
    vins = [car.vin for car in cars]
    total = CARS * PER_CAR
    with instances(private_broker, migrated_database, tmp_path, keys.private_path) as gateways:
        done, paused = threading.Event(), threading.Event()
        publisher = threading.Thread(target=publish_all, args=(cars, done, paused), daemon=True)
        publisher.start()
        # The split: every instance takes a share (Mosquitto deals round-robin).
        await wait_until(
            "every instance to receive messages",
            lambda: all(metric_sum(g.metrics(), RECEIVED) > 20 for g in gateways),
        )
        victim = gateways[1]
        victim.kill()
        before = await stored(migrated_database, vins)
        assert before < total, "publishing ended before the kill; publish more"
        assert await asyncio.to_thread(done.wait, WAIT_S * 4), "publishing did not finish"
        # Its turn of what came meanwhile waits in its session: the others cannot finish alone.
        await asyncio.sleep(2.0)
        waiting = total - await stored(migrated_database, vins)
        assert waiting > 0, "no message was dealt to the killed instance's session"
        victim.start()  # same account: it resumes its session and gets its share
        deadline = time.monotonic() + WAIT_S * 2
        while await stored(migrated_database, vins) < total:
            assert time.monotonic() < deadline, "the restarted instance did not catch up"
            await asyncio.sleep(0.1)
        per_instance = [metric_sum(g.metrics(), RECEIVED) for g in gateways]
    for car in cars:
        car.close()
    rows = await fetch(
        migrated_database,
        "SELECT count(*), count(DISTINCT (vin, boot_id, seq)) FROM telemetry WHERE vin = ANY(%s)",
        (vins,),
    )
    assert rows == [(total, total)], per_instance
    assert per_instance[1] >= waiting  # the restarted one received at least what waited for it


async def test_any_instance_dispatches_commands_and_each_reaches_one_final_state(
    private_broker: MosquittoBroker,
    migrated_database: str,
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path / "keys")
    token = await make_token(migrated_database, "scale-operator", Role.OPERATOR)
    account = car_account(private_broker)
    vin = account.username
    quick = {"TGW_COMMANDS__ANSWER_TIMEOUT_S": "3", "TGW_COMMANDS__EXPIRY_GRACE_S": "1"}
    with instances(private_broker, migrated_database, tmp_path, keys.private_path, quick) as gws:
        async with registered_car(account, keys, dsn=migrated_database):
            headers = {"Authorization": f"Bearer {token}"}

            async def command_through(gateway: GatewayInstance, action: str) -> tuple[str, str]:
                async with httpx.AsyncClient(
                    base_url=gateway.base_url, headers=headers, timeout=10.0
                ) as client:
                    response = await client.post(
                        f"/v1/vehicles/{vin}/commands", json={"action": action, "ttl_s": 5}
                    )
                    assert response.status_code == 202, response.text
                    command_id = str(response.json()["command_id"])
                    record = await wait_status(client, command_id, FINAL)
                    return command_id, str(record["status"])

            for gateway, action in zip(gws, ("lock", "unlock", "lock"), strict=True):
                _, status = await command_through(gateway, action)
                assert status in SUCCESS
            sent_before = sum(metric_sum(g.metrics(), DISPATCHED) for g in gws[1:])
            gws[0].kill()
            # Instance 1 is gone: the others take the requests and dispatch them. The car's
            # answers go through the shared subscription too, and the broker keeps dealing a
            # turn of them to the killed instance's session: such a command cannot hear its
            # result in time (timed_out / expired). Either way: one final state each.
            outcomes = [
                await command_through(gateway, action)
                for gateway, action in zip(gws[1:] * 2, ("unlock", "lock") * 2, strict=True)
            ]
            sent_after = sum(metric_sum(g.metrics(), DISPATCHED) for g in gws[1:])
            assert sent_after - sent_before == len(outcomes)
            gws[0].start()  # same account: the answers dealt to it arrive now, too late
            await asyncio.sleep(2.0)
            for command_id, status in outcomes:
                rows = await fetch(
                    migrated_database, "SELECT status::text FROM commands WHERE id = %s",
                    (command_id,),
                )  # fmt: skip
                assert rows == [(status,)], "a late answer changed a final state"
            _, status = await command_through(gws[0], "unlock")
            assert status in SUCCESS
