"""Turns a load-bench JSON result into a Markdown report and a PNG chart.

Usage: python bench/report.py bench/results/load-<date>.json "<command line>"
Writes load-<date>.md and load-<date>.png next to the JSON.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIGS = ["floor", "native", "latchkey"]


def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def main():
    src = Path(sys.argv[1])
    command = sys.argv[2] if len(sys.argv) > 2 else "scripts/bench"
    r = json.loads(src.read_text())
    m = r["medians"]
    floor = m["floor"]
    lines = [
        f"# Load benchmark, {src.stem.removeprefix('load-')}",
        "",
        f"Command: `{command}`. Medians over {r['rounds']} interleaved rounds "
        f"(the order of configurations rotates each round); each run lasts "
        f"{r['seconds_per_run']} s.",
        "",
        f"- Machine: {r['machine']['cores']} cores, {r['machine']['cpu']}, "
        f"Linux {r['machine']['kernel']}. Shared with other work while it ran: "
        "treat small differences as noise.",
        f"- Versions: {r['versions']['envoy']}; {r['versions']['oha']}; "
        f"{r['versions']['rustc']}; {r['versions']['redis']}.",
        f"- Upstream: {r['upstream']}.",
        f"- Request: {r['request']}.",
        f"- Envoy: {r['envoy']}. Load generator: oha, fixed rate with latency "
        "correction for the latency tables, fixed concurrency "
        f"{r['concurrency']} for throughput.",
        "- Configurations: **floor** = Envoy straight to the upstream; "
        "**native** = Envoy's `envoy.filters.http.mcp` + native `ext_authz` "
        "(request body forwarded) calling `latchkey serve`; **latchkey** = the "
        "Latchkey Wasm filter calling `latchkey serve`, credential injected. "
        "**latchkey + list filtering** is not measured yet: tool-list "
        "rewriting (issue #5) is not built.",
        "",
    ]
    for rate in (500, 2000):
        lines += [
            f"## Latency at {rate} requests/s (ms)",
            "",
            "| config | p50 | p90 | p99 | p99.9 | added p50 over floor | added p99 over floor |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in CONFIGS:
            row = m[c]
            k = f"rate_{rate}"
            added50 = (row[f"{k}.p50_ms"] or 0) - (floor[f"{k}.p50_ms"] or 0)
            added99 = (row[f"{k}.p99_ms"] or 0) - (floor[f"{k}.p99_ms"] or 0)
            lines.append(
                f"| {c} | {fmt(row[f'{k}.p50_ms'])} | {fmt(row[f'{k}.p90_ms'])} | "
                f"{fmt(row[f'{k}.p99_ms'])} | {fmt(row[f'{k}.p99_9_ms'])} | "
                f"{'—' if c == 'floor' else fmt(added50)} | {'—' if c == 'floor' else fmt(added99)} |"
            )
        lines.append("")
    lines += [
        f"## Throughput at concurrency {r['concurrency']}, CPU and Redis",
        "",
        "| config | requests/s | ratio to floor | Envoy CPU s / 10k req | latchkey serve CPU s / 10k req | Redis commands / request |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONFIGS:
        row = m[c]
        rps = row["throughput.rps"] or 0
        ratio = rps / (floor["throughput.rps"] or 1)
        lines.append(
            f"| {c} | {rps:.0f} | {ratio:.2f} | {fmt(row['cpu_envoy_s_per_10k'], 2)} | "
            f"{'—' if c == 'floor' else fmt(row['cpu_serve_s_per_10k'], 2)} | "
            f"{'—' if c == 'floor' else fmt(row['redis_commands_per_request'], 4)} |"
        )
    mem = r["serve_memory"]
    kib = lambda v: "n/a" if v is None else f"{v / 1024:.1f} MiB"  # noqa: E731
    lines += [
        "",
        "## Memory of `latchkey serve`",
        "",
        "| stored identities | serve RSS | Redis used_memory |",
        "|---|---|---|",
        f"| 3 (after the runs above) | {kib(mem.get('idle_kib'))} | — |",
        f"| 10 000 | {kib(mem.get('stored_10000_kib'))} | {mem.get('redis_used_memory_10000', 0) / 1048576:.1f} MiB |",
        f"| 100 000 | {kib(mem.get('stored_100000_kib'))} | {mem.get('redis_used_memory_100000', 0) / 1048576:.1f} MiB |",
        "",
        "A replica keeps in memory only what requests touch (cache bounded at "
        "200 000 entries, each expiring after `cache_ttl_secs`); stored "
        "identities live in Redis.",
        "",
        "## Against the targets",
        "",
    ]
    lat, nat = m["latchkey"], m["native"]
    a50 = lat["rate_500.p50_ms"] - floor["rate_500.p50_ms"]
    a99 = lat["rate_500.p99_ms"] - floor["rate_500.p99_ms"]
    ratio = lat["throughput.rps"] / floor["throughput.rps"]
    checks = [
        (f"added p50 at 500/s ≤ 0.3 ms: {a50:.3f} ms", a50 <= 0.3),
        (f"added p99 at 500/s ≤ 1 ms: {a99:.3f} ms", a99 <= 1.0),
        (f"throughput ≥ 70 % of floor: {ratio * 100:.0f} %", ratio >= 0.7),
        (
            f"throughput not below native: {lat['throughput.rps']:.0f} vs {nat['throughput.rps']:.0f} req/s",
            lat["throughput.rps"] >= nat["throughput.rps"],
        ),
        (
            f"zero Redis commands per request once warm: {lat['redis_commands_per_request']:.4f}",
            lat["redis_commands_per_request"] == 0,
        ),
    ]
    for text, ok in checks:
        lines.append(f"- {'met' if ok else 'MISSED'}: {text}")
    lines += [
        "- ≥ 20 000 cached Check calls per second per core: see the Criterion "
        "`check_cached` figure in the micro-benchmark results.",
        "",
    ]
    out_md = src.with_suffix(".md")
    out_md.write_text("\n".join(lines))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.2
    groups = ["rate_500.p50_ms", "rate_500.p99_ms", "rate_2000.p50_ms", "rate_2000.p99_ms"]
    labels = ["p50 @500/s", "p99 @500/s", "p50 @2000/s", "p99 @2000/s"]
    for i, c in enumerate(CONFIGS):
        xs = [g + (i - 1) * width for g in range(len(groups))]
        axes[0].bar(xs, [m[c][g] or 0 for g in groups], width, label=c)
    axes[0].set_xticks(range(len(groups)), labels)
    axes[0].set_ylabel("latency (ms)")
    axes[0].set_title("Latency at fixed rates (median of rounds)")
    axes[0].legend()
    axes[1].bar(CONFIGS, [m[c]["throughput.rps"] or 0 for c in CONFIGS], color=["C0", "C1", "C2"])
    axes[1].set_ylabel("requests/s")
    axes[1].set_title(f"Throughput at concurrency {r['concurrency']}")
    fig.suptitle(f"Latchkey load benchmark ({r['machine']['cores']} cores, Envoy --concurrency 1)")
    fig.tight_layout()
    fig.savefig(src.with_suffix(".png"), dpi=110)
    print(f"wrote {out_md} and {src.with_suffix('.png')}")


if __name__ == "__main__":
    main()
