"""REST and chat-API throughput: requests/s, p50/p95 latency and errors with 1 and 8 clients.

    .venv/bin/python bench/bench_rest.py [--home DATA_DIR] [--seconds 10] [--clients 1,8] [--json]

Starts a real ``readnext serve`` and a real ``readnext chat`` (subprocesses, 127.0.0.1, random
ports) over ``--home`` (default: a goodbooks index built with the ingest CLI from
../shared/data/goodbooks into a temporary data dir), then drives ``POST /v1/recommend`` and the
chat's Gradio ``/recommend`` API from N client threads (httpx, keep-alive pools) for a bounded
time each. Reports also the first request's latency on the freshly started, warmed REST server.

The clients share the machine's cores with the server: on 2 cores, 8 client threads take a real
part of the CPU, so these are lower bounds of what a separate client machine would see.
``run(home)`` is what ``bench/run.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GOODBOOKS = ROOT.parent / "shared" / "data" / "goodbooks"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "READNEXT_LLM_BACKEND": "none",  # the targets are for retrieval + templates, no LLM
}
QUERIES = ("what should I read next?", "something funny", "more fantasy", "a classic")


def free_port() -> int:
    """A free loopback port in 20000-32000 (below the ephemeral range)."""
    for _ in range(100):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def build_goodbooks_home(base: Path) -> Path:
    """Ingest ../shared/data/goodbooks with the CLI into ``base/goodbooks-home``."""
    home = base / "goodbooks-home"
    if (home / "CURRENT").is_file():
        return home
    subprocess.run(
        [sys.executable, "-m", "assistant.cli", "ingest", "--dataset", str(GOODBOOKS)]
        + ["--data-dir", str(home), "--no-progress", "--json"],
        cwd=ROOT,
        env={**os.environ, **ENV},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return home


class Server:
    """A ``readnext`` server subprocess (``serve`` or ``chat``) on a random loopback port."""

    def __init__(self, kind: str, home: Path, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assistant.cli", kind, "--port", str(self.port)]
            + ["--data-dir", str(home), *extra],
            cwd=ROOT,
            env={**os.environ, **ENV},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log

    def wait(self, path: str, timeout: float = 300) -> float:
        """Wait until ``GET path`` answers 200; returns seconds since start."""
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-1500:]}")
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return time.monotonic() - self.t0
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.url}{path} not answering after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(d)] = (int(parts[1]), (int(parts[11]) + int(parts[12])) / tick)
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (pp, _) in stats.items() if pp in tree and p not in tree}
        tree |= more
        grew = bool(more)
    return sum(stats[p][1] for p in tree if p in stats)


def drive(
    call, readers: list[str], clients: int, seconds: float, server_pid: int | None = None
) -> dict:
    """Run ``call(client_no, reader, query)`` from ``clients`` threads for ``seconds``.

    Also reports the CPU seconds per request of this (client) process and, given
    ``server_pid``, of the server's process tree: unlike latency, those hardly depend on what
    else runs on the machine.
    """
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(n: int) -> None:
        rnd = random.Random(n)
        mine, bad = [], []
        start.wait()
        while time.perf_counter() < stop_at[0]:
            u, q = rnd.choice(readers), rnd.choice(QUERIES)
            t = time.perf_counter()
            try:
                call(n, u, q)
                mine.append((time.perf_counter() - t) * 1e3)
            except Exception as e:  # counted, and the first few kept for the report
                bad.append(f"{type(e).__name__}: {str(e)[:120]}")
        with lock:
            lat.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    srv0 = _tree_cpu_s(server_pid) if server_pid else 0.0
    load0 = os.getloadavg()[0]
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    srv = (_tree_cpu_s(server_pid) - srv0) if server_pid else float("nan")
    a = np.array(lat) if lat else np.array([np.nan])
    n = max(len(lat), 1)
    return {
        "clients": clients,
        "requests": len(lat),
        "requests_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "errors": len(errors),
        "error_examples": errors[:3],
        "client_cpu_ms_per_request": round(cpu / n * 1e3, 2),
        "client_cpu_share_of_2_cores": round(cpu / wall / 2, 2),
        "server_cpu_ms_per_request": round(srv / n * 1e3, 2),
        "load_avg_1m_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _readers(home: Path, n: int = 500) -> list[str]:
    from retrieval.index import current_index_dir

    z = np.load(current_index_dir(home) / "ratings.npz")
    ids = np.unique(z["user_id"])
    rnd = np.random.default_rng(0)
    return [str(x) for x in rnd.choice(ids, size=min(n, len(ids)), replace=False)]


def bench_rest(home: Path, clients, seconds: float, logdir: Path, workers: int = 1) -> dict:
    """``POST /v1/recommend`` with an admin key (created here, revoked at the end).

    ``workers > 1`` starts ``readnext serve --workers N`` (which needs ``[chroma] mode =
    "http"`` in the environment or config of ``home``) and waits until every worker answers.
    """
    import httpx

    from assistant.api_keys import KeyStore

    keys = KeyStore.for_home(home)
    key = keys.create(admin=True, label="bench_rest (temporary)")
    extra = ("--workers", str(workers)) if workers > 1 else ()
    srv = Server("serve", home, logdir / "serve.log", extra)
    out: dict = {"workers": workers}
    try:
        out["ready_s"] = round(srv.wait("/v1/healthz"), 1)
        if workers > 1:  # every worker warm: each answers on its own connection
            seen: set[int] = set()
            end = time.monotonic() + 600
            while len(seen) < workers and time.monotonic() < end:
                with httpx.Client(base_url=srv.url, timeout=30) as one:
                    seen.add(one.get("/v1/healthz").json()["worker"])
            out["all_workers_ready_s"] = round(time.monotonic() - srv.t0, 1)
        readers = _readers(home)
        h = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=srv.url, headers=h, timeout=60) as c:
            t = time.perf_counter()
            r = c.post("/v1/recommend", json={"reader": readers[0], "k": 10})
            out["first_request_ms"] = round((time.perf_counter() - t) * 1e3, 1)
            r.raise_for_status()
        limits = httpx.Limits(max_connections=max(clients) + 4, max_keepalive_connections=64)
        pool = httpx.Client(base_url=srv.url, headers=h, timeout=60, limits=limits)

        service_ms: list[float] = []

        def call(n: int, u: str, q: str) -> None:
            r = pool.post("/v1/recommend", json={"reader": u, "query": q, "k": 10})
            if r.status_code != 200 or not r.json()["items"]:
                raise RuntimeError(f"{r.status_code} {r.text[:100]}")
            service_ms.append(float(r.headers["server-timing"].split("dur=")[1]))

        def health(n: int, u: str, q: str) -> None:
            pool.get("/v1/healthz").raise_for_status()

        try:
            for n in clients:
                service_ms.clear()
                out[f"clients_{n}"] = res = drive(call, readers, n, seconds, srv.proc.pid)
                # the service's own time per request (Server-Timing): the rest is HTTP + waiting
                res["service_p50_ms"] = round(float(np.percentile(service_ms, 50)), 1)
                res["service_p95_ms"] = round(float(np.percentile(service_ms, 95)), 1)
            # the HTTP stack's ceiling: a route that does no work, with the most clients
            out["healthz_ceiling"] = drive(
                health, readers, max(clients), min(seconds, 5.0), srv.proc.pid
            )
        finally:
            pool.close()
    finally:
        srv.stop()
        keys.revoke(key)
    return out


def bench_chat(home: Path, clients, seconds: float, logdir: Path) -> dict:
    """The chat's Gradio ``/recommend`` API: queued (``/gradio_api/call`` + its SSE stream, as
    gradio_client calls it; ``clients_N``) and direct (``POST /gradio_api/run/recommend``, one
    JSON reply; ``direct_clients_N``)."""
    import httpx

    srv = Server("chat", home, logdir / "chat.log")
    out: dict = {}
    try:
        out["ready_s"] = round(srv.wait("/gradio_api/info"), 1)
        readers = _readers(home)
        limits = httpx.Limits(max_connections=2 * max(clients) + 4)
        pool = httpx.Client(base_url=srv.url, timeout=120, limits=limits)

        def call(n: int, u: str, q: str) -> None:
            r = pool.post("/gradio_api/call/recommend", json={"data": [u, q, 10]})
            r.raise_for_status()
            ev = r.json()["event_id"]
            body = pool.get(f"/gradio_api/call/recommend/{ev}").text
            event = None
            for line in body.splitlines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "complete":
                    res = json.loads(line[5:])[0]
                    if "error" in res or not res.get("items"):
                        raise RuntimeError(str(res)[:100])
                    return
            raise RuntimeError(f"no result: {body[:100]!r}")

        def run_direct(n: int, u: str, q: str) -> None:
            # the same endpoint without the queue: one POST, the result in its JSON reply
            r = pool.post("/gradio_api/run/recommend", json={"data": [u, q, 10]})
            r.raise_for_status()
            res = r.json()["data"][0]
            if "error" in res or not res.get("items"):
                raise RuntimeError(str(res)[:100])

        try:
            call(0, readers[0], QUERIES[0])  # the first call pays for Gradio's lazy start-up
            run_direct(0, readers[0], QUERIES[0])
            for n in clients:
                out[f"clients_{n}"] = drive(call, readers, n, seconds, srv.proc.pid)
            for n in clients:
                out[f"direct_clients_{n}"] = drive(run_direct, readers, n, seconds, srv.proc.pid)
        finally:
            pool.close()
    finally:
        srv.stop()
    return out


def run(home: Path | None = None, clients=(1, 8), seconds: float = 10.0) -> dict:
    """REST and chat-API throughput over ``home`` (None: build a goodbooks index first).

    Args:
        home: a data dir with an index (gets a temporary admin key, revoked at the end).
        clients: concurrent client counts to measure.
        seconds: duration of each setting.

    Returns:
        ``{"rest": {...}, "chat_api": {...}, "targets": {...}}`` with, per client count,
        requests/s, p50/p95 ms and errors.
    """
    with tempfile.TemporaryDirectory(prefix="readnext-bench-rest-") as tmp:
        base = Path(tmp)
        if home is None:
            home = build_goodbooks_home(base)
        home = Path(home)
        clients = tuple(int(c) for c in clients)
        rest = bench_rest(home, clients, seconds, base)
        chat = bench_chat(home, clients, seconds, base)
    top = f"clients_{max(clients)}"
    targets = {}
    if max(clients) == 8:
        targets = {
            "rest_8_clients_req_s>=150": rest[top]["requests_per_s"] >= 150,
            "rest_8_clients_p95_ms<100": rest[top]["p95_ms"] < 100,
            "chat_api_8_clients_req_s>=50": chat[top]["requests_per_s"] >= 50,
            "rest_first_request_ms<1000": rest["first_request_ms"] < 1000,
        }
    return {
        "home": str(home),
        "seconds_per_setting": seconds,
        "cores": os.cpu_count(),
        "rest": rest,
        "chat_api": chat,
        "targets": targets,
        "note": "client threads share the cores with the server; other jobs may be running",
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--home", help="data dir with an index (default: build goodbooks)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--only", choices=["rest", "chat"], help="measure only one server")
    ap.add_argument(
        "--workers", type=int, default=1, help="REST: serve --workers N (needs a Chroma server)"
    )
    ap.add_argument("--json", action="store_true", help="(the output is always JSON)")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    if args.only:
        home = Path(args.home) if args.home else None
        with tempfile.TemporaryDirectory(prefix="readnext-bench-rest-") as tmp:
            home = home or build_goodbooks_home(Path(tmp))
            if args.only == "rest":
                res = bench_rest(home, clients, args.seconds, Path(tmp), args.workers)
            else:
                res = bench_chat(home, clients, args.seconds, Path(tmp))
            out = {args.only: res}
    else:
        out = run(Path(args.home) if args.home else None, clients, args.seconds)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
