"""Memory and start-up of the real chat server with the default LLM loaded and warmed.

    python bench/bench_chat_rss.py --home ~/.readnext [--llm local] [--turns 2]

Starts ``readnext chat`` on a random 127.0.0.1 port in a fresh process, waits until it listens
(the model is loaded and warmed before that), runs a few ``/recommend`` turns through
gradio_client (each with LLM text for the top picks, within the turn budget), and reports the
server's start-up time, turn latency and resident memory (VmRSS now, VmHWM peak) from /proc.
Timings are noisy on a shared CPU; memory is not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mem(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, val = line.split(":", 1)
            out[key] = round(int(val.split()[0]) / 1024 / 1024, 3)  # GiB
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True, help="READNEXT_HOME with an ingested index")
    ap.add_argument("--llm", default="local")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument(
        "--user", default=None, help="reader id (default: the first with >= 20 ratings)"
    )
    args = ap.parse_args(argv)
    port = random.randint(20000, 60000)
    env = dict(
        os.environ,
        READNEXT_HOME=str(args.home),
        READNEXT_LLM_BACKEND=args.llm,
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant.cli", "chat", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    res: dict = {"llm": args.llm}
    try:
        while True:
            if proc.poll() is not None:
                print(proc.stdout.read() if proc.stdout else "", file=sys.stderr)
                raise SystemExit(f"chat server exited with {proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.perf_counter() - t0 > 600:
                raise SystemExit("chat server did not start within 600 s")
            time.sleep(0.5)
        res["start_to_listen_s"] = round(time.perf_counter() - t0, 1)
        res["after_start"] = _mem(proc.pid)
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        user = args.user
        if user is None:
            readers = client.predict(limit=200, api_name="/readers")
            user = next(r["user_id"] for r in readers if r["n_ratings"] >= 20)
        turns = []
        for _ in range(args.turns):
            t = time.perf_counter()
            out = client.predict(
                user_id=user, message="what should I read next?", k=5, api_name="/recommend"
            )
            turns.append(
                {
                    "s": round(time.perf_counter() - t, 1),
                    "sources": [i.get("explanation_source") for i in out.get("items", [])],
                    "notes": out.get("notes"),
                }
            )
        res["turns"] = turns
        res["after_turns"] = _mem(proc.pid)
        res["load_avg_1m"] = round(os.getloadavg()[0], 1)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
