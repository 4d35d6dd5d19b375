"""Where a served request's time goes, per stage, as a table.

    python -m bench.stages --repository model_repository --model mlp --concurrency 1,32

Starts one service (the one hosting the model) on free ports, runs a closed-loop point
of `python -m bench --address` at each concurrency, and reads
nnserve_request_stage_seconds before and after it: mean microseconds per successful
request in each stage (decode, queue, merge, compute, split, handoff, encode), their sum,
and the mean request duration they explain.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from services.ops.metrics import STAGES
from services.settings import SERVICE_MODELS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_SERIES = re.compile(
    r'nnserve_request_(stage|duration)_seconds_(sum|count)\{([^}]*)\} (\S+)'
)  # fmt: skip

Totals = dict[tuple[str, str], float]  # (stage or "request", sum|count) -> value


def scrape(metrics_port: int, model: str) -> Totals:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    totals: Totals = {}
    for kind, field, labels, value in _SERIES.findall(text.decode()):
        if f'model="{model}"' not in labels:
            continue
        stage = re.search(r'stage="(\w+)"', labels)
        key = (stage.group(1) if kind == "stage" and stage else "request", field)
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def mean_us(before: Totals, after: Totals, key: str) -> float:
    count = after[(key, "count")] - before.get((key, "count"), 0.0)
    total = after[(key, "sum")] - before.get((key, "sum"), 0.0)
    return total / count * 1e6 if count else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", default="3s")
    opts = parser.parse_args()
    service = next(s for s, models in SERVICE_MODELS.items() if opts.model in models)
    work = Path(tempfile.mkdtemp(prefix="nnserve-stages-"))
    ports_file = work / "ports.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "services", "--service", service, "--models",
         json.dumps([opts.model]), "--repository", str(opts.repository), "--grpc-port", "0",
         "--metrics-port", "0", "--ports-file", str(ports_file)],
        cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ports_file.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("the service did not start")
            time.sleep(0.1)
        ports = json.loads(ports_file.read_text())
        columns = (*STAGES, "request")
        print(f"{opts.model}: mean us per successful request, KServe v2, batch 1")
        print("| clients | " + " | ".join(STAGES) + " | sum of stages | request |")
        print("|---|" + "---|" * (len(STAGES) + 2))
        for clients in (int(c) for c in opts.concurrency.split(",")):
            before = scrape(ports["metrics_port"], opts.model)
            subprocess.run(
                [sys.executable, "-m", "bench", "--address", f"127.0.0.1:{ports['grpc_port']}",
                 "--models", opts.model, "--apis", "v2", "--repository", str(opts.repository),
                 "--concurrency", str(clients), "--duration", opts.duration, "--no-floor",
                 "--no-plots", "--out", str(work / "bench"), "--log-level", "WARNING"],
                cwd=PROJECT_ROOT, check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            after = scrape(ports["metrics_port"], opts.model)

            means = {key: mean_us(before, after, key) for key in columns}
            cells = " | ".join(f"{means[s]:.0f}" for s in STAGES)
            stage_sum = sum(means[s] for s in STAGES)
            print(f"| {clients} | {cells} | {stage_sum:.0f} | {means['request']:.0f} |")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
