"""Throughput and latency of `tunelab serve` under load, with dynamic batching and one request at a time, in the
same run (`make bench-serve`).

Two LoRA runs on the embedded MiniLM (trained here on a slice of the built-in Rotten Tomatoes, seeds 0 and 1, and
reused when run again; or the run folders given) are served by the real command, `tunelab serve`, in a process of
its own, once with `--max-batch 16` and once with `--max-batch 1`. A client in this process keeps 16 requests in
flight over loopback, each one review for one of the two adapters in turn, and records each request's latency.
Figures: requests/s over the timed requests (after a warm-up), p50 and p99 latency, the mean inputs per forward
batch (from /health), and errors. The two modes alternate within each repeat, so that other load on the machine
hits them alike, and the table shows each mode's fastest repeat (every repeat is in the JSON). Results also go to
bench/results/serve_load.json.

    python bench/serve_load.py [--requests 1000] [--concurrency 16] [--repeats 2] [--runs RUN RUN] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
MODES = (("dynamic batching", 16), ("one at a time", 1))  # (name, --max-batch)


def bench_runs(folder: Path) -> list[Path]:
    """Two small LoRA runs on MiniLM (400 reviews for training, one epoch), trained once and kept in `folder`."""
    from tunelab.api import train
    runs = []
    for seed in (0, 1):
        name = f"minilm-lora-seed{seed}"
        if not (folder / name / "metrics.json").is_file():
            train({"task": "classification", "model": "minilm", "name": name, "output": str(folder),
                   "data": {"source": "rotten_tomatoes", "max_examples": 500},
                   "method": {"name": "lora"}, "train": {"epochs": 1, "seed": seed}}, log=lambda *_: None)
        runs.append(folder / name)
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: list[Path], max_batch: int, log: Path) -> tuple[subprocess.Popen, int]:
    import httpx
    port = free_port()
    command = [sys.executable, "-m", "tunelab.cli", "serve", *map(str, runs), "--port", str(port),
               "--max-batch", str(max_batch)]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tunelab serve ended with {server.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise SystemExit(f"tunelab serve did not answer within 300 s; see {log}")


async def load(port: int, models: list[str], texts: list[str], requests: int, concurrency: int) -> dict:
    import httpx
    jobs = [(models[i % len(models)], texts[i % len(texts)]) for i in range(requests)]
    latencies, errors = [], 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        for model, text in jobs[:2 * concurrency]:  # warm-up, untimed: first batches, connections
            await client.post("/v1/predict", json={"model": model, "inputs": text})
        before = (await client.get("/health")).json()["batches"]
        pending = iter(jobs)

        async def worker() -> None:
            nonlocal errors
            for model, text in pending:  # one shared iterator: each job is taken once
                start = time.perf_counter()
                r = await client.post("/v1/predict", json={"model": model, "inputs": text})
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        after = (await client.get("/health")).json()["batches"]
    batches = sum(after[m] - before[m] for m in models)
    ms = sorted(1000 * x for x in latencies)
    return {"requests": requests, "concurrency": concurrency, "seconds": round(seconds, 2),
            "requests_per_second": round(requests / seconds, 1), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1), "errors": errors,
            "batches": batches, "mean_batch": round(requests / max(batches, 1), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", help="run folders to serve (default: two LoRA runs on MiniLM, trained here)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="rounds of both modes, alternating")
    p.add_argument("--json", default=str(HERE / "results" / "serve_load.json"))
    args = p.parse_args()
    results_dir = Path(args.json).parent
    results_dir.mkdir(parents=True, exist_ok=True)
    runs = [Path(r) for r in args.runs] if args.runs else bench_runs(HERE / "results" / "serve_runs")
    models = [r.resolve().name for r in runs]
    texts = [json.loads(line)["text"] for line in (runs[0] / "predictions.jsonl").read_text().splitlines()]
    repeats = []
    for repeat in range(args.repeats):
        for mode, max_batch in MODES:
            server, port = start_server(runs, max_batch, results_dir / f"serve_load-{max_batch}.log")
            try:
                figures = asyncio.run(load(port, models, texts, args.requests, args.concurrency))
            finally:
                server.terminate()
                server.wait(timeout=60)
            repeats.append({"mode": mode, "max_batch": max_batch, "repeat": repeat, **figures})
            print(f"{mode}, repeat {repeat}: {figures}", file=sys.stderr)
    results = [max((r for r in repeats if r["mode"] == mode), key=lambda r: r["requests_per_second"])
               for mode, _ in MODES]
    base = results[1]["requests_per_second"]
    for r in results:
        r["vs_one_at_a_time"] = round(r["requests_per_second"] / base, 2)
    print(f"\n{args.requests} requests, {args.concurrency} in flight, {len(runs)} LoRA adapters on one base "
          f"({', '.join(models)}), {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; the fastest "
          f"of {args.repeats} repeats\n")
    print("| mode | --max-batch | requests/s | p50 ms | p99 ms | inputs per batch | errors | vs one at a time |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['max_batch']} | {r['requests_per_second']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['mean_batch']} | {r['errors']} | {r['vs_one_at_a_time']}x |")
    Path(args.json).write_text(json.dumps({"runs": [str(r) for r in runs], "results": results, "repeats": repeats},
                                          indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
