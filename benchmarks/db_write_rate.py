"""How many reads and passages a PostgreSQL server takes through anpr's store on this machine.

    python benchmarks/db_write_rate.py [--seconds 10] [--writers 1 4] [--reads 1 4 32] [--fsync off on]

Starts a throw-away server (tests/support/postgres.py, as the tests do) and writes to it
through `ReadStore.write`, the call every camera's policy gate makes (through the spool,
which adds nothing while the database answers): one transaction per batch, holding
`--reads` kept reads and one hourly counter of blocked reads (a denied purpose), as a
camera's round writes them; and, apart, passages one per transaction, as tracks end.
`--writers` processes write at once, each as its own camera (a cluster's nodes), each
with its own connection. The server runs with `fsync` off (as the tests run it) and then
on (a production server's default: each commit waits for this machine's disk).

Prints one JSON line per measurement: transactions and records (reads or passages) per
second, the CPU milliseconds each transaction cost the writers (anpr's side) and the
server (all its processes), and the bytes a stored row takes (its table and indexes).
Client and server share this machine's cores, so the rates are a floor for a server of
its own; the CPU costs say what a server's cores take.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sqlalchemy import text  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402

from anpr.records import CountKey, Outcome, Passage, PlateRead, PolicedRead, hour_bucket  # noqa: E402
from anpr.storage.keys import Keys  # noqa: E402
from anpr.storage.store import ReadStore  # noqa: E402

DAY = 86400.0


def kept_read(camera: str, frame: int, now: float) -> PolicedRead:
    """A read as a gate keeps it: every field a real one has."""
    plate = f"AB{frame % 1000:03d}CD"
    read = PlateRead(
        f"rtsp://{camera}.example/stream",
        frame,
        now,
        plate,
        plate.lower(),
        0.8,
        0.9,
        0.88,
        (410.0, 620.5, 530.25, 650.0),
        "plate-yolov8n@abc",
        "ppocrv4-rec@def",
        ((plate, 0.9), (plate[:-1], 0.05)),
        "FR",
        "LLDDDLL",
        track=frame // 25,
    )
    return PolicedRead(read, camera, "parking_fps", "FR-FPS", now + DAY, False)


def passage(camera: str, track: int, now: float) -> Passage:
    plate = f"AB{track % 1000:03d}CD"
    return Passage(
        f"rtsp://{camera}.example/stream",
        camera,
        "parking_fps",
        "FR-FPS",
        track,
        plate,
        0.93,
        ((plate, 0.93),),
        "FR",
        "LLDDDLL",
        track * 25,
        track * 25 + 24,
        now - 1,
        now,
        6,
        now + DAY,
    )


def write(url: str, camera: str, reads: int, passages: bool, seconds: float, start: float, out) -> None:
    """One writer: batches until `seconds` have passed from `start` (Unix time, shared by the writers)."""
    store = ReadStore(url, Keys.from_secret(os.urandom(32)))
    store.check()
    while time.time() < start:
        time.sleep(0.01)
    cpu = time.process_time()
    done = transactions = 0
    blocked = CountKey(hour_bucket(time.time()), camera, "law_enforcement_request", "FR-MUN-REQ", Outcome.BLOCKED)
    while time.time() < start + seconds:
        now = time.time()
        if passages:
            store.write([], passages=[passage(camera, transactions, now)])
            done += 1
        else:
            store.write([kept_read(camera, done + i, now) for i in range(reads)], {blocked: reads})
            done += reads
        transactions += 1
    cpu = time.process_time() - cpu
    store.close()
    out.put((transactions, done, cpu))


def measure(
    server: PostgresServer, url: str, writers: int, reads: int, passages: bool, seconds: float
) -> dict[str, object]:
    schema = ReadStore(url, Keys.from_secret(os.urandom(32)))
    schema.check()  # the tables made once, as a cluster's driver makes them before its nodes start
    results: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 3  # every writer connected and its schema checked before the clock starts
    processes = [
        multiprocessing.Process(target=write, args=(url, f"cam-{n}", reads, passages, seconds, start, results))
        for n in range(writers)
    ]
    for process in processes:
        process.start()
    while time.time() < start:
        time.sleep(0.01)
    server_cpu = server_cpu_seconds(server)
    totals = [results.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join()
    server_cpu = server_cpu_seconds(server) - server_cpu
    transactions, records = sum(t[0] for t in totals), sum(t[1] for t in totals)
    client_cpu = sum(t[2] for t in totals)
    table = "passages" if passages else "reads"
    with schema.engine.connect() as connection:  # its table, indexes included, per row stored
        size = connection.execute(text(f"select pg_total_relation_size('{table}') / count(*) from {table}")).scalar()
    schema.close()
    return {
        "writers": writers,
        "what": "passages" if passages else "reads",
        "per_transaction": 1 if passages else reads,
        "seconds": seconds,
        "transactions_per_s": round(transactions / seconds, 1),
        "records_per_s": round(records / seconds, 1),
        "client_cpu_ms_per_transaction": round(1000 * client_cpu / transactions, 2),
        "server_cpu_ms_per_transaction": round(1000 * server_cpu / transactions, 2),
        "bytes_per_row": int(size),
    }


def server_cpu_seconds(server: PostgresServer) -> float:
    """CPU time of every process of the server so far, those ended included (a postmaster's
    children's times are added to its own when it reaps them)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    postmaster, *children = server._processes()
    for pid in [postmaster, *children]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile: counted in the postmaster's children's times
        total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if pid == postmaster else 0)
    return total / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reads", type=int, nargs="+", default=[1, 4, 32], help="reads per transaction")
    parser.add_argument("--fsync", nargs="+", choices=["off", "on"], default=["off", "on"])
    args = parser.parse_args()
    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    for fsync in args.fsync:
        with PostgresServer(fsync=fsync == "on") as server:
            for writers in args.writers:
                for reads in args.reads:
                    row = measure(server, server.new_database(), writers, reads, False, args.seconds)
                    print(json.dumps({**row, "fsync": fsync, **machine}), flush=True)
                row = measure(server, server.new_database(), writers, 1, True, args.seconds)
                print(json.dumps({**row, "fsync": fsync, **machine}), flush=True)


if __name__ == "__main__":
    main()
