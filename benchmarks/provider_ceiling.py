"""What the fake provider delivers on this machine when nothing but a client talks to it.

C / latency is the limit of a provider that answers every request in exactly ``latency``. The
fake provider is a Python process on the same two cores as everything else: under load it
answers later than that (its event loop, its timer, the kernel), so even a client doing nothing
else cannot reach C / latency. This measures the rate that *can* be reached: careflow's own
provider client, in a process of its own, sending N messages of the benchmark's size in one
continuous ``send_many`` (no batches, no database, no rendering) at concurrency C, against a
fresh fake provider with the same latency. careflow's figure is read against both.

``python -m benchmarks.provider_ceiling --url U --token T --messages N --concurrency C`` prints
one JSON line: ``{"messages", "seconds", "msgs_per_s", "latency_p50_ms", "latency_p90_ms"}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.harness import REPO, FakeProviderProcess

#: The size of the benchmark workflow's rendered KakaoTalk message (Korean text, about 100 characters).
BODY = "김민지님, 오늘 스케일링 받으시느라 수고 많으셨습니다. 오늘 하루는 뜨겁거나 자극적인 음식을 피해 주세요. - 케어플로우 치과"


def measure(provider: FakeProviderProcess, messages: int, concurrency: int) -> dict[str, Any]:
    """Run the client alone in a child process against ``provider``; its figures."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.provider_ceiling",
            "--url",
            provider.url,
            "--token",
            provider.token,
            "--messages",
            str(messages),
            "--concurrency",
            str(concurrency),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    """Send and print the figures (the child side of ``measure``)."""
    from careflow.providers.client import Message, ProviderClient

    parser = argparse.ArgumentParser(prog="python -m benchmarks.provider_ceiling")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)

    client = ProviderClient(args.url, args.token, max_concurrency=args.concurrency, timeout=10)
    run = f"ceiling-{int(time.time() * 1000)}"
    batch = [
        Message(
            idempotency_key=f"cf-{run}-{i}",
            channel="kakao",
            to="+821055501234",
            body=BODY,
            metadata={"workflow_id": "ceiling", "node_id": "a1", "execution_id": f"{run}-{i}"},
        )
        for i in range(args.messages)
    ]
    client.send_batch(batch[: args.concurrency])  # connections open, first-call costs paid
    rest = batch[args.concurrency :]
    started = time.perf_counter()
    results = client.send_batch(rest)
    seconds = time.perf_counter() - started
    sent = sum(1 for r in results if r.delivered)
    if sent != len(rest):
        raise SystemExit(f"the provider accepted {sent} of {len(rest)} messages")
    latencies = sorted(r.latency_ms for r in results)
    print(
        json.dumps(
            {
                "messages": len(rest),
                "seconds": round(seconds, 3),
                "msgs_per_s": round(len(rest) / seconds, 1),
                "latency_p50_ms": round(latencies[len(latencies) // 2], 1),
                "latency_p90_ms": round(latencies[int(len(latencies) * 0.9)], 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
