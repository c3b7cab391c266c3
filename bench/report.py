"""Turns a load-bench JSON result into a Markdown report and a PNG chart.

Usage: python bench/report.py bench/results/load-<date>.json "<command line>" [seconds]
Writes load-<date>.md and load-<date>.png next to the JSON. The
configurations come from the JSON (load-bench's SETUPS), so a new one needs
no change here.
Any analysis written into the Markdown by hand after a run is overwritten
when the report is generated again (it describes that run's numbers).
"""

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Issue #7's targets.
TARGET_ADDED_P50_MS = 0.3
TARGET_ADDED_P99_MS = 1.0
TARGET_THROUGHPUT_RATIO = 0.7
TARGET_CHECKS_PER_SEC = 20_000


def fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}"


def count(n):
    """An integer with thin spaces between thousands: 100 000."""
    return f"{n:,.0f}".replace(",", "\u202f")


def micro_check_figure(results_dir):
    """The newest micro-benchmark's cached-Check time (the last one that
    file records, in its last column), if there is one."""
    for path in sorted(results_dir.glob("micro-*.md"), reverse=True):
        found = None
        for line in path.read_text().splitlines():
            if "check_cached" in line or "whole `Check` handler" in line:
                times = re.findall(r"([0-9.]+) µs", line)
                if times:
                    found = float(times[-1])
        if found:
            return path.name, found
    return None, None


def main():
    src = Path(sys.argv[1])
    command = sys.argv[2] if len(sys.argv) > 2 else "scripts/bench"
    took = int(sys.argv[3]) if len(sys.argv) > 3 else None
    r = json.loads(src.read_text())
    m = r["medians"]
    setups = r["setups"]
    measured = [s["name"] for s in setups if s["available"]]
    floor = m["floor"]
    rates = r["rates"]
    mach = r["machine"]
    v = r["versions"]

    def added(c, key):
        a, b = m[c].get(key), floor.get(key)
        return None if a is None or b is None else a - b

    stem = src.stem.removeprefix("load-")
    title = re.sub(r"-run(\d+)$", r" (run \1)", stem)
    lines = [
        f"# Load benchmark, {title}",
        "",
        f"Command: `{command}`"
        + (f" (ran {took // 60} min {took % 60} s, builds not counted)" if took else "")
        + f". Medians over {r['rounds']} interleaved rounds (the order of "
        f"configurations rotates each round); each oha run lasts "
        f"{r['seconds_per_run']} s.",
        "",
        f"- Built from commit {r.get('commit', 'unknown')}.",
        f"- Machine: {mach['cores']} cores, {mach['cpu']}, {mach.get('memory_gib', '?')} GiB, "
        f"Linux {mach['kernel']}. **Shared**: every process below (oha, the Envoy under "
        "test, `latchkey serve`, fast-mcp, Redis) and other people's builds ran on the "
        f"same 2 cores; load average {r.get('loadavg_before', '?')} before, "
        f"{r.get('loadavg_after', '?')} after. Treat small differences as noise.",
        f"- Versions: {v['envoy']}; {v['oha']}; {v['rustc']}; {v['redis']}; node {v.get('node', '?')}.",
        f"- Upstream: {r['upstream']}.",
        f"- Request: {r['request']}.",
        f"- Envoy: {r['envoy']}.",
        f"- Load: oha at fixed rates {', '.join(map(str, rates))} requests/s "
        f"(up to {r['rate_connections']} connections, `--latency-correction` against "
        f"coordinated omission), then fixed concurrency {r['concurrency']} for "
        "throughput. Every response of every run was HTTP 200 (the run fails otherwise), "
        "and before measuring each configuration answered 50 calls with the expected "
        "JSON-RPC result and the expected credential at the upstream.",
        "- Configurations:",
    ]
    for s in setups:
        lines.append(
            f"  - **{s['name']}**: {s['about']}"
            + ("" if s["available"] else f" — **{s['unavailable']}**")
        )
    lines.append("")

    for rate in rates:
        k = f"rate_{rate}"
        lines += [
            f"## Latency at {rate} requests/s (ms)",
            "",
            "| config | p50 | p90 | p99 | p99.9 | added p50 over floor | added p99 over floor | achieved req/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in setups:
            c = s["name"]
            if not s["available"]:
                lines.append(f"| {c} | not yet available | | | | | | |")
                continue
            row = m[c]
            is_floor = c == "floor"
            lines.append(
                f"| {c} | {fmt(row.get(f'{k}.p50_ms'))} | {fmt(row.get(f'{k}.p90_ms'))} | "
                f"{fmt(row.get(f'{k}.p99_ms'))} | {fmt(row.get(f'{k}.p99_9_ms'))} | "
                f"{'—' if is_floor else fmt(added(c, f'{k}.p50_ms'))} | "
                f"{'—' if is_floor else fmt(added(c, f'{k}.p99_ms'))} | "
                f"{fmt(row.get(f'{k}.rps'), 0)} |"
            )
        lines.append("")

    lines += [
        f"## Throughput at concurrency {r['concurrency']}, CPU, Redis",
        "",
        "CPU is user + system time from `/proc/<pid>/stat` over each run, per 10 000 "
        "requests: at 500/s (an unsaturated machine) and at fixed concurrency "
        "(saturated). Redis commands per request count every command during the "
        "configuration's runs except the benchmark's own `INFO`, the service's "
        "replica announcement (`HSET` every 10 s) and the audit writer's batches, "
        "which are counted apart: audit round trips per request are its script "
        "calls (each carries every decision event of a few milliseconds, written "
        "by one `XADD` each inside Redis), off the request path.",
        "",
        "| config | requests/s | ratio to floor | Envoy CPU s/10k @500/s | Envoy CPU s/10k @c | "
        "serve CPU s/10k @500/s | serve CPU s/10k @c | Redis cmds/req | audit round trips/req | Envoy RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in setups:
        c = s["name"]
        if not s["available"]:
            lines.append(f"| {c} | not yet available | | | | | | | | |")
            continue
        row = m[c]
        rps = row.get("throughput.rps") or 0
        ratio = rps / (floor.get("throughput.rps") or 1)
        is_floor = c == "floor"
        rss = row.get("envoy_rss_kib")
        lines.append(
            f"| {c} | {rps:.0f} | {ratio:.2f} | {fmt(row.get('rate_500.cpu_envoy_s_per_10k'), 2)} | "
            f"{fmt(row.get('throughput.cpu_envoy_s_per_10k'), 2)} | "
            f"{'—' if is_floor else fmt(row.get('rate_500.cpu_serve_s_per_10k'), 2)} | "
            f"{'—' if is_floor else fmt(row.get('throughput.cpu_serve_s_per_10k'), 2)} | "
            f"{'—' if is_floor else fmt(row.get('redis_commands_per_request'), 4)} | "
            f"{'—' if is_floor else fmt(row.get('audit_round_trips_per_request'), 4)} | "
            f"{'n/a' if rss is None else f'{rss / 1024:.1f} MiB'} |"
        )
    if any("list_throughput.rps" in m[c] for c in measured):
        lines += [
            "",
            f"## `tools/list` at concurrency {r['concurrency']}",
            "",
            f"Request: {r.get('list_request', 'tools/list')}. Without a policy the list "
            "passes through the filter untouched; **latchkey-lists** buffers each answer, "
            "trims it to the caller's view and re-serializes it.",
            "",
            "| config | requests/s | ratio to floor | p50 ms | p99 ms | Envoy CPU s/10k | serve CPU s/10k |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in measured:
            row = m[c]
            rps = row.get("list_throughput.rps") or 0
            ratio = rps / (floor.get("list_throughput.rps") or 1)
            lines.append(
                f"| {c} | {rps:.0f} | {ratio:.2f} | {fmt(row.get('list_throughput.p50_ms'))} | "
                f"{fmt(row.get('list_throughput.p99_ms'))} | "
                f"{fmt(row.get('list_throughput.cpu_envoy_s_per_10k'), 2)} | "
                f"{'—' if c == 'floor' else fmt(row.get('list_throughput.cpu_serve_s_per_10k'), 2)} |"
            )
    lines += ["", "Redis commands seen per round (all, including the background ones):", ""]
    for i, rnd in enumerate(r["per_round"], 1):
        parts = []
        for c in measured:
            cmds = rnd.get(c, {}).get("redis_commands", {})
            shown = ", ".join(f"{k} {n}" for k, n in cmds.items()) or "none"
            parts.append(f"{c}: {shown}")
        lines.append(f"- round {i}: " + "; ".join(parts))

    mem = r["serve_memory"]

    def mib(kib):
        return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"

    lines += [
        "",
        "## Memory of `latchkey serve`",
        "",
        "Identities stored as real sealed records (AES-256-GCM, through the service's "
        "own `Credentials::put_identity`, the path `latchkey identity put-shared` "
        f"takes, 200 at a time; {fmt(mem.get('store_seconds'), 0)} s for 100 000), "
        "while the service runs; none of them is used by a request.",
        "",
        "| stored identities | serve RSS | Redis used_memory |",
        "|---|---|---|",
        f"| 1 (after the runs above) | {mib(r.get('serve_rss_after_runs_kib'))} | — |",
    ]
    for n in (10_000, 100_000):
        used = mem.get(f"redis_used_memory_{n}")
        lines.append(
            f"| {count(n)} | {mib(mem.get(f'stored_{n}_kib'))} | "
            f"{'n/a' if used is None else f'{used / 1048576:.1f} MiB'} |"
        )

    lat, nat = m["latchkey"], m["native"]
    a50 = added("latchkey", "rate_500.p50_ms")
    a99 = added("latchkey", "rate_500.p99_ms")
    ratio = lat["throughput.rps"] / floor["throughput.rps"]
    vs_native = lat["throughput.rps"] / nat["throughput.rps"]
    micro_file, micro_us = micro_check_figure(src.parent)
    lines += [
        "",
        "## Against issue #7's targets (latchkey, same run)",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| added p50 at 500/s ≤ {TARGET_ADDED_P50_MS} ms | {fmt(a50)} ms "
        f"({a50 / TARGET_ADDED_P50_MS:.1f}× the budget) | {'met' if a50 <= TARGET_ADDED_P50_MS else 'MISSED'} |",
        f"| added p99 at 500/s ≤ {TARGET_ADDED_P99_MS} ms | {fmt(a99)} ms "
        f"({a99 / TARGET_ADDED_P99_MS:.1f}× the budget) | {'met' if a99 <= TARGET_ADDED_P99_MS else 'MISSED'} |",
        f"| throughput ≥ {TARGET_THROUGHPUT_RATIO:.0%} of floor | {ratio:.0%} "
        f"({lat['throughput.rps']:.0f} / {floor['throughput.rps']:.0f} req/s) | "
        f"{'met' if ratio >= TARGET_THROUGHPUT_RATIO else 'MISSED'} |",
        f"| throughput not below native | {vs_native:.2f}× native "
        f"({lat['throughput.rps']:.0f} / {nat['throughput.rps']:.0f} req/s) | "
        f"{'met' if vs_native >= 1 else 'MISSED'} |",
        f"| zero Redis round trips per request once warm | "
        f"{lat['redis_commands_per_request']:.4f} per request on the decision path; "
        f"the audit writer adds {fmt(lat.get('audit_round_trips_per_request'), 4)} "
        f"round trips per request in the background | "
        f"{'met' if lat['redis_commands_per_request'] == 0 else 'MISSED'} |",
    ]
    if micro_us:
        per_core = 1e6 / micro_us
        lines.append(
            f"| ≥ {count(TARGET_CHECKS_PER_SEC)} cached Check/s/core | {micro_us} µs per cached "
            f"Check = {count(per_core)}/s on one core (Criterion `check_cached`, "
            f"`{micro_file}`, not this run) | "
            f"{'met' if per_core >= TARGET_CHECKS_PER_SEC else 'MISSED'} |"
        )
    else:
        lines.append(
            f"| ≥ {count(TARGET_CHECKS_PER_SEC)} cached Check/s/core | no micro-benchmark result "
            "found in this folder | not measured here |"
        )

    lines += ["", "## Per round (to see the spread)", ""]
    lines += [
        "| round | config | p50 @500/s | p99 @500/s | p99 @2000/s | req/s @c |",
        "|---|---|---|---|---|---|",
    ]
    for i, rnd in enumerate(r["per_round"], 1):
        for c in measured:
            e = rnd.get(c)
            if not e:
                continue
            lines.append(
                f"| {i} | {c} | {fmt(e['rate_500']['p50_ms'])} | {fmt(e['rate_500']['p99_ms'])} | "
                f"{fmt(e['rate_2000']['p99_ms'])} | {fmt(e['throughput']['rps'], 0)} |"
            )

    cmds = r["commands"]
    lines += ["", "## Command lines", "", "```"]
    lines.append(f"# {command}, which runs (paths relative to the repository):")
    for key in ("redis", "idp", "upstream", "serve", "serve_lists"):
        if key in cmds:
            lines.append(cmds[key])
    for name, render in cmds["render"].items():
        lines.append(f"{render}   # {name}")
    lines.append(cmds["envoy"])
    lines.append(cmds["oha_rate"] + "   # also -q 2000")
    lines.append(cmds["oha_throughput"])
    if "oha_list_throughput" in cmds:
        lines.append(cmds["oha_list_throughput"])
    lines += ["```", ""]

    out_md = src.with_suffix(".md")
    out_md.write_text("\n".join(lines))

    chart(r, m, measured, rates, src.with_suffix(".png"))
    print(f"wrote {out_md} and {src.with_suffix('.png')}")


def chart(r, m, configs, rates, out):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    groups = [(f"rate_{q}.{p}_ms", f"{p} @{q}/s") for q in rates for p in ("p50", "p99")]
    width = 0.8 / len(configs)
    for i, c in enumerate(configs):
        xs = [g + (i - (len(configs) - 1) / 2) * width for g in range(len(groups))]
        axes[0].bar(xs, [m[c].get(k) or 0 for k, _ in groups], width, label=c)
    axes[0].set_xticks(range(len(groups)), [label for _, label in groups])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("latency (ms, log scale)")
    axes[0].set_title("Latency at fixed rates")
    axes[0].legend()

    colors = [f"C{i}" for i in range(len(configs))]
    rps = [m[c].get("throughput.rps") or 0 for c in configs]
    bars = axes[1].bar(configs, rps, color=colors)
    for b, v in zip(bars, rps):
        axes[1].annotate(
            f"{v / rps[0]:.0%}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom"
        )
    axes[1].set_ylabel("requests/s (label: ratio to floor)")
    axes[1].set_title(f"Throughput at concurrency {r['concurrency']}")

    envoy = [m[c].get("rate_500.cpu_envoy_s_per_10k") or 0 for c in configs]
    serve = [
        0 if c == "floor" else (m[c].get("rate_500.cpu_serve_s_per_10k") or 0) for c in configs
    ]
    axes[2].bar(configs, envoy, label="Envoy")
    axes[2].bar(configs, serve, bottom=envoy, label="latchkey serve")
    axes[2].set_ylabel("CPU seconds per 10 000 requests")
    axes[2].set_title("CPU per request at 500/s")
    axes[2].legend()

    fig.suptitle(
        f"Latchkey load benchmark: medians of {r['rounds']} rounds "
        f"({r['machine']['cores']} shared cores, Envoy --concurrency 1)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
