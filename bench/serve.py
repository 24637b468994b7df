#!/usr/bin/env python
"""Start-up of `conceptmine search` / `conceptmine sql`, and `conceptmine serve`'s latencies.

    .venv/bin/python bench/serve.py                        # on a fresh demo store (runs `conceptmine demo` first)
    .venv/bin/python bench/serve.py --store DIR [--dataroot DIR] --repeats 5

Each CLI command runs as a fresh process, as a user types it (wall time and peak RSS from
``os.wait4``). Then `conceptmine serve` starts as a process on a free loopback port and is
timed over HTTP (httpx, one connection): the time to its first answer, the first grid page, the
filters' values (first call: a column scan per filter), a filter change, a selective filter
(the rarest concept: the page reads scene batches until it has its rows), a crop's detail, "more like this" of the first crop, and a free-text query, each the
median of ``--repeats`` calls after the first; peak RSS of the server process (``VmHWM``).
Prints a Markdown table; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUERY = "a person pushing a cart"


def env_for(store: Path, dataroot: Path | None, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONCEPTMINE_", "NUSCENES_"))}
    env.update({"CONCEPTMINE_STORE": str(store), "CONCEPTMINE_PROFILE": "offline", "HF_HUB_OFFLINE": "1",
                "YOLO_OFFLINE": "1", "DAGSTER_HOME": str(home),
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    if dataroot:
        env["NUSCENES_DATAROOT"] = str(dataroot)
    return env


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def demo_store(work: Path) -> tuple[Path, Path]:
    """The built-in demo run into ``work`` (store, dataroot)."""
    dataroot = work / "dataroot"
    fixtures = REPO / "data" / "fixtures"
    python = [sys.executable, "-m", "conceptmine_assets.cli"]
    env = env_for(work / "store", dataroot, work / "home")
    env.update({"CONCEPTMINE_CONFIG": str(REPO / "conceptmine.demo.yaml"), "YOLO_CONFIG_DIR": str(work / "yolo")})
    (work / "home").mkdir(parents=True, exist_ok=True)
    (work / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    subprocess.run([*python, "synth-dataroot", "--out", str(dataroot), str(fixtures / "nuscenes-real-slice"),
                    str(fixtures / "nuscenes-udacity-highway")], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*python, "demo"], env=env, check=True, stdout=subprocess.DEVNULL)
    return work / "store", dataroot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_rows(env: dict, repeats: int) -> list[tuple[str, str]]:
    import httpx

    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "conceptmine_assets.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            while True:
                try:
                    client.get("/api/health")
                    break
                except httpx.TransportError:
                    if proc.poll() is not None:
                        raise SystemExit(f"serve exited: {proc.stderr.read().decode()[-2000:]}") from None
                    time.sleep(0.05)
            rows.append(("serve: start to first answer (imports, encoder, index)", f"{time.perf_counter() - started:.2f} s"))

            def call(url: str, params: dict | None = None) -> float:
                t = time.perf_counter()
                response = client.get(url, params=params)
                response.raise_for_status()
                return (time.perf_counter() - t) * 1000

            rows.append(("serve: first grid page, first call", f"{call('/api/crops', {'limit': 60}):.0f} ms"))
            rows.append(("serve: the filters' values, first call (a column scan per filter)", f"{call('/api/facets'):.0f} ms"))
            first = client.get("/api/crops", params={"limit": 1}).json()["crops"][0]
            facets = client.get("/api/facets").json()
            rare = min(facets["concept"], key=facets["concept"].get)
            crop = f"/api/crops/{first['scene_name']}/{first['detection_id']}"
            cases = [
                ("serve: grid page, 60 crops", "/api/crops", {"limit": 60}),
                ("serve: filter change (group=target)", "/api/crops", {"limit": 60, "group": "target"}),
                (f"serve: selective filter ({facets['concept'][rare]} crops of concept {rare})", "/api/crops",
                 {"limit": 60, "concept": rare}),
                ("serve: crop detail", crop, None),
                ("serve: more like this (k=24)", f"{crop}/similar", {"k": 24}),
                (f'serve: search "{QUERY}" (k=48)', "/api/search", {"q": QUERY, "k": 48}),
            ]
            for name, url, params in cases:
                call(url, params)  # warm
                rows.append((name, f"{statistics.median(call(url, params) for _ in range(repeats)):.0f} ms"))
            rows.append(("serve: peak RSS of the server process", f"{vm_hwm_mb(proc.pid):.0f} MB"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, help="an existing store with a search index (default: a fresh demo run)")
    p.add_argument("--dataroot", type=Path, help="its dataroot (frame images); optional")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        store, dataroot = (args.store, args.dataroot) if args.store else demo_store(work)
        env = env_for(store, dataroot, work / "home")
        python = [sys.executable, "-m", "conceptmine_assets.cli"]
        rows = []
        for name, cmd in (("`conceptmine search` (caption mode), fresh process", [*python, "search", QUERY, "-k", "10"]),
                          ("`conceptmine sql` (count crops), fresh process", [*python, "sql", "SELECT count(*) FROM crops"])):
            timed(cmd, env)  # warm the file cache
            runs = [timed(cmd, env) for _ in range(args.repeats)]
            rows.append((name, f"{statistics.median(r[0] for r in runs):.2f} s, {max(r[1] for r in runs):.0f} MB"))
        rows += server_rows(env, args.repeats)
    load = os.getloadavg()
    print(f"Store: {store if args.store else 'a fresh demo run (4 scenes)'}; {os.cpu_count()} CPUs, "
          f"load {load[0]:.1f}; medians of {args.repeats}\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
