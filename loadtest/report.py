#!/usr/bin/env python3
"""Statistics, JSON, Markdown and SVG for loadtest/run. Python 3 standard library only.

loadtest/run measures; this file only reads what it wrote:

- runs.jsonl: one JSON object per run (scenario, server, round, client tool, the path of the
  client's raw output, CPU ticks of the server's threads and of the backend's before/after);
- the raw client outputs: wrk's stdout with the `WRKJSON {...}` line printed by our Lua
  `done()` hook, or oha's `--json` document.

Subcommands:
  progress RUNS.jsonl          one line about the last run (to stderr, while the run goes on)
  rate RUNS.jsonl SCENARIO SERVER FRACTION
                               FRACTION x the median rps of SERVER in SCENARIO (for oha -q)
  report RUNS.jsonl META.json OUTDIR
                               results.json, table.md and chart.svg in OUTDIR; the table on stdout
  scaling OUTDIR RUNDIR...     scaling.json, scaling.md and scaling.svg in OUTDIR from the results.json of
                               runs that differ in worker count (loadtest/scale); the table on
                               stdout
"""

import json
import math
import statistics
import sys
from pathlib import Path

# The order servers are shown in, and their colours in the chart.
SERVERS = ["ringgate", "nginx", "haproxy"]
COLOURS = {"ringgate": "#d9480f", "nginx": "#2b8a3e", "haproxy": "#1c7ed6"}
SCENARIO_TITLES = {
    "proxy-get": "proxy-get: small GET, keep-alive",
    "proxy-post": "proxy-post: 1 KiB POST body, keep-alive",
    "proxy-large": "proxy-large: 1 MiB response, keep-alive",
    "direct": "direct: answered by the proxy itself, no upstream",
    "new-conn": "new-conn: Connection: close on every request",
    "latency": "latency: fixed request rate (open loop)",
    "rate-limited": "rate-limited: one client over a 1000/s limit (most answers are 429)",
    "cache-hit": "cache-hit: GET of a cacheable response, every request a hit",
    "tls": "tls: small GET over TLS (ECDSA P-256), keep-alive",
    "tls-new-conn": "tls-new-conn: TLS, Connection: close on every request (a handshake each)",
}
# oha reports requests still in flight when -z runs out as errors with this text; they are the
# end of the run, not failures of the server.
OHA_DEADLINE = "aborted due to deadline"


def load_runs(path):
    """The records of runs.jsonl, each with `raw_path`: its client output, found relative to
    the results directory so that a moved directory can be reported again."""
    runs = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            run = json.loads(line)
            run["raw_path"] = str(Path(path).parent / run["raw"])
            runs.append(run)
    return runs


def parse_wrk(text):
    """The metrics of one wrk run, from the line our Lua done() hook prints."""
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            w = json.loads(line[len("WRKJSON "):])
            secs = w["duration_us"] / 1e6
            return {
                "requests": w["requests"],
                "seconds": secs,
                "rps": w["requests"] / secs if secs > 0 else 0.0,
                "p50_ms": w["p50_us"] / 1e3,
                "p99_ms": w["p99_us"] / 1e3,
                "p999_ms": w["p999_us"] / 1e3,
                "max_ms": w["max_us"] / 1e3,
                # wrk counts socket errors by kind; "status" is responses with a status >= 400.
                "errors": w["connect"] + w["read"] + w["write"] + w["timeout"],
                "error_kinds": {k: w[k] for k in ("connect", "read", "write", "timeout")},
                "non2xx": w["status"],
            }
    raise ValueError("no WRKJSON line in wrk output (did wrk fail to start?)")


def parse_oha(text):
    """The metrics of one oha run, from its --json document (times in seconds)."""
    o = json.loads(text)
    codes = {int(k): v for k, v in (o.get("statusCodeDistribution") or {}).items()}
    errs = dict(o.get("errorDistribution") or {})
    deadline = sum(v for k, v in errs.items() if OHA_DEADLINE in k)
    errors = sum(errs.values()) - deadline
    completed = sum(codes.values())
    secs = o["summary"]["total"]
    pct = o.get("latencyPercentiles") or {}

    def ms(key):
        v = pct.get(key)
        return None if v is None else v * 1e3

    return {
        "requests": completed,
        "seconds": secs,
        "rps": completed / secs if secs > 0 else 0.0,
        "p50_ms": ms("p50"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99.9"),
        "max_ms": (o["summary"].get("slowest") or 0) * 1e3,
        "errors": errors,
        "error_kinds": {k: v for k, v in errs.items() if OHA_DEADLINE not in k},
        "in_flight_at_end": deadline,
        "non2xx": sum(v for k, v in codes.items() if not 200 <= k < 300),
    }


def cpu_us_per_req(before, after, clk_tck, requests):
    """(user, sys, total) CPU microseconds per completed request from two tick samples."""
    if requests <= 0:
        return None, None, None
    user = (after[0] - before[0]) * 1e6 / clk_tck / requests
    sys_ = (after[1] - before[1]) * 1e6 / clk_tck / requests
    return user, sys_, user + sys_


def metrics(run):
    """Everything measured in one run, as a flat dict."""
    text = Path(run["raw_path"]).read_text(errors="replace")
    m = parse_oha(text) if run["tool"] == "oha" else parse_wrk(text)
    hz = run["clk_tck"]
    c = run["cpu"]
    m["user_us"], m["sys_us"], m["total_us"] = cpu_us_per_req(
        c["task_before"], c["task_after"], hz, m["requests"]
    )
    # The same from /proc/PID/stat, which also keeps the time of threads that exited during the
    # run (io_uring's io-wq workers come and go); a gap between the two means some did.
    _, _, m["total_us_proc"] = cpu_us_per_req(
        c["proc_before"], c["proc_after"], hz, m["requests"]
    )
    # Requests let through (2xx or 3xx) per second: the rate-limited scenario's check that the
    # three limits are equivalent.
    m["passed_rps"] = (m["requests"] - m["non2xx"]) / m["seconds"] if m["seconds"] > 0 else 0.0
    # How busy the server was, in cores: near its worker count means it was the bottleneck;
    # well below means the client, the backend or the machine was.
    secs = m["seconds"]
    ticks = (c["task_after"][0] - c["task_before"][0]) + (c["task_after"][1] - c["task_before"][1])
    m["cpu_cores"] = ticks / hz / secs if secs > 0 else None
    b = run["backend_cpu"]
    _, _, m["backend_total_us"] = cpu_us_per_req(
        b["task_before"], b["task_after"], hz, m["requests"]
    )
    return m


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    """(max - min) / median over rounds, or None with fewer than two rounds."""
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med else None


KEYS = ["rps", "p50_ms", "p99_ms", "p999_ms", "user_us", "sys_us", "total_us",
        "total_us_proc", "backend_total_us", "cpu_cores", "passed_rps", "errors", "non2xx",
        "requests"]


def summarise(runs):
    """{scenario: {server: medians}} over the rounds of each (scenario, server)."""
    out = {}
    for run in runs:
        if run.get("kind", "measure") != "measure":
            continue
        out.setdefault(run["scenario"], {}).setdefault(run["server"], []).append(run)
    summary = {}
    for scenario, by_server in out.items():
        summary[scenario] = {}
        for server, rs in by_server.items():
            ms = [r["metrics"] for r in rs]
            s = {k: median([m.get(k) for m in ms]) for k in KEYS}
            s["rounds"] = len(ms)
            s["errors_sum"] = sum(m["errors"] for m in ms)
            s["non2xx_sum"] = sum(m["non2xx"] for m in ms)
            s["total_us_spread"] = spread([m["total_us"] for m in ms])
            s["rps_spread"] = spread([m["rps"] for m in ms])
            s["tool"] = rs[0]["tool"]
            s["rate"] = rs[0].get("rate")
            s["note"] = rs[0].get("note")
            summary[scenario][server] = s
    return summary


def ratio(a, b):
    return a / b if a is not None and b else None


def ratios(summary):
    """ringgate / peer for rps, total CPU per request and p99, per scenario."""
    out = {}
    for scenario, by_server in summary.items():
        rg = by_server.get("ringgate")
        if not rg:
            continue
        # A "cache hit" that went to the backend is not one: no ratios to quote.
        if scenario == "cache-hit" and (rg.get("backend_total_us") or 0) > 1.0:
            continue
        out[scenario] = {}
        for peer in ("nginx", "haproxy"):
            p = by_server.get(peer)
            if p:
                out[scenario][peer] = {
                    # In `latency` each server gets a rate set from its own maximum: its rps
                    # is our choice, not its result.
                    "rps": None if scenario == "latency" else ratio(rg["rps"], p["rps"]),
                    "cpu": ratio(rg["total_us"], p["total_us"]),
                    "user": ratio(rg["user_us"], p["user_us"]),
                    "p99": ratio(rg["p99_ms"], p["p99_ms"]),
                }
    return out


def fmt(v, digits=1):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def fmt_x(v):
    return "–" if v is None else f"{v:.2f}x"


def fmt_pct(v):
    return "" if v is None else f" ±{v * 50:.0f}%"


def table(meta, summary, rats):
    """The Markdown report: one table per scenario, then ringgate's ratios."""
    lines = []
    a = meta["args"]
    lines.append(f"## ringgate load test, {meta['date']}")
    lines.append("")
    lines.append(
        f"{meta['machine']['nproc']} CPUs ({meta['machine']['cpu_model']}), kernel "
        f"{meta['machine']['kernel']}; ringgate on {meta.get('ringgate_driver', 'unknown')}; "
        f"{a['rounds']} round(s) x {a['duration']} s per server, "
        f"servers alternating; {a['workers']} worker(s) each; c={a['conns']}; "
        f"server CPUs: {a['server_cpus'] or 'any'}, client CPUs: {a['client_cpus'] or 'any'}. "
        "Medians over rounds. CPU µs/req: utime+stime of all the server's threads "
        "(/proc/PID/task/*/stat) over the run / completed requests; ± is half the "
        "min–max spread over rounds; server CPU %: that CPU time / run time (100 = one core "
        "busy: the server was the bottleneck only if this is near workers x 100)."
    )
    lines.append("")
    for scenario in meta["scenarios"]:
        if scenario in meta.get("skipped", {}):
            lines.append(f"### {scenario}")
            lines.append("")
            lines.append(f"skipped: {meta['skipped'][scenario]}")
            lines.append("")
            continue
        by_server = summary.get(scenario)
        if not by_server:
            continue
        latency = scenario == "latency"
        title = SCENARIO_TITLES.get(scenario, scenario)
        if latency and all(s["tool"] != "oha" for s in by_server.values()):
            title = "latency: wrk at full load (oha missing, so no fixed rate)"
        lines.append(f"### {title}")
        lines.append("")
        head = ["server"]
        if latency:
            head += ["rate -q"]
        head += ["rps", "p50 ms", "p99 ms", "p99.9 ms", "user µs/req", "sys µs/req",
                 "total µs/req", "server CPU %", "errors", "non-2xx"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for server in SERVERS:
            s = by_server.get(server)
            if not s:
                continue
            row = [server]
            if latency:
                row.append(fmt(s["rate"], 0))
            row += [
                fmt(s["rps"], 0) + fmt_pct(s["rps_spread"]),
                fmt_ms(s["p50_ms"]),
                fmt_ms(s["p99_ms"]),
                fmt_ms(s["p999_ms"]),
                fmt(s["user_us"], 2),
                fmt(s["sys_us"], 2),
                fmt(s["total_us"], 2) + fmt_pct(s["total_us_spread"]),
                fmt(None if s["cpu_cores"] is None else s["cpu_cores"] * 100, 0),
                str(s["errors_sum"]),
                str(s["non2xx_sum"]),
            ]
            lines.append("| " + " | ".join(row) + " |")
        notes = sorted({s["note"] for s in by_server.values() if s.get("note")})
        if scenario == "rate-limited":
            passed = ", ".join(f"{srv} {fmt(by_server[srv]['passed_rps'], 0)}"
                               for srv in SERVERS if srv in by_server)
            notes.append("by design nearly every request is refused with 429 by the proxy "
                         "itself (non-2xx counts them), so CPU µs/req is mostly the cost of a "
                         f"refusal. Let through per second (limit 1000/s, burst 100): {passed}.")
        if scenario == "cache-hit":
            backend = ", ".join(f"{srv} {fmt(by_server[srv]['backend_total_us'], 2)}"
                                for srv in SERVERS if srv in by_server)
            notes.append("the backend's CPU µs per client request shows whether the answers "
                         f"came from the cache (near 0) or not: {backend}.")
            for srv in SERVERS:
                b_us = by_server.get(srv, {}).get("backend_total_us")
                if b_us is not None and b_us > 1.0:
                    notes.append(f"WARNING: {srv} did not answer from its cache: the backend "
                                 f"spent {b_us:.2f} µs per request, so its numbers here are "
                                 "those of a proxied GET.")
        if latency and any(s["tool"] == "oha" for s in by_server.values()):
            notes.append("each server is offered half of its own maximum rps (oha -q, "
                         "--latency-correction), so rps is not compared; p50/p99/p99.9 are "
                         "at equal relative load, not at equal absolute load.")
        r = rats.get(scenario, {})
        parts = []
        for peer in ("nginx", "haproxy"):
            if peer in r:
                x = r[peer]
                parts.append(
                    f"vs {peer}: rps {fmt_x(x['rps'])}, CPU/req {fmt_x(x['cpu'])} "
                    f"(user {fmt_x(x['user'])}), p99 {fmt_x(x['p99'])}"
                )
        lines.append("")
        if parts:
            lines.append("ringgate " + "; ".join(parts) + ".")
            lines.append("")
        for note in notes:
            lines.append(f"Note: {note}")
            lines.append("")
        # Threads that exit during a run take their CPU time out of the task/*/stat sum.
        for server, s in by_server.items():
            t, p = s.get("total_us"), s.get("total_us_proc")
            if t and p and abs(p - t) / t > 0.05:
                lines.append(
                    f"Note: {server}'s process-wide CPU (/proc/PID/stat, includes exited "
                    f"threads) is {fmt(p, 2)} µs/req against {fmt(t, 2)} from its live threads."
                )
                lines.append("")
    if rats:
        lines.append("### ringgate / peer (below 1 is better for CPU and p99, above 1 for rps)")
        lines.append("")
        lines.append("| scenario | rps / nginx | CPU / nginx | user / nginx | p99 / nginx "
                     "| rps / HAProxy | CPU / HAProxy | user / HAProxy | p99 / HAProxy |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for scenario in meta["scenarios"]:
            if scenario not in rats:
                continue
            r = rats[scenario]
            row = [scenario]
            for peer in ("nginx", "haproxy"):
                x = r.get(peer, {})
                row += [fmt_x(x.get("rps")), fmt_x(x.get("cpu")), fmt_x(x.get("user")),
                        fmt_x(x.get("p99"))]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def nice_axis(v, ticks=5):
    """(top, step): a round step (1, 2, 2.5 or 5 x 10^k) giving at most `ticks` intervals up to
    a top at or above v."""
    if not v or v <= 0:
        return 1.0, 0.25
    raw = v / ticks
    exp = math.floor(math.log10(raw))
    step = 10 ** (exp + 1)
    for m in (1, 2, 2.5, 5):
        if m * 10 ** exp >= raw:
            step = m * 10 ** exp
            break
    return math.ceil(v / step - 1e-9) * step, step


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_start(width, height, left, title, subtitle):
    """The opening of a chart: the canvas, a title and a subtitle (both already escaped), and
    a colour swatch per server. Returns the lines and the x where the legend may go on."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">{title}</text>',
        f'<text x="{left}" y="40" fill="#555">{subtitle}</text>',
    ]
    lx = left
    for server in SERVERS:
        out.append(f'<rect x="{lx}" y="50" width="12" height="12" fill="{COLOURS[server]}"/>')
        out.append(f'<text x="{lx + 16}" y="60">{server}</text>')
        lx += 90
    return out, lx


def chart(meta, summary):
    """Grouped bars per scenario: CPU µs/req (user solid, sys light) above, rps below."""
    scenarios = [s for s in meta["scenarios"] if s in summary]
    group_w, bar_w, gap = 150, 34, 6
    left, right, top = 70, 20, 70
    panel_h, panel_gap = 220, 90
    # Wide enough for the titles and legend even with a single scenario.
    width = max(780, left + right + max(1, len(scenarios)) * group_w)
    height = top + 2 * panel_h + panel_gap + 124
    # Legend: one swatch per server, then what solid and light mean.
    out, lx = svg_start(
        width, height, left, f'ringgate vs nginx vs HAProxy, {esc(meta["date"])}',
        f'{esc(meta["machine"]["nproc"])} CPUs, kernel {esc(meta["machine"]["kernel"])}; '
        f'{meta["args"]["workers"]} worker(s) each, c={meta["args"]["conns"]}, '
        f'{meta["args"]["rounds"]} round(s) x {meta["args"]["duration"]} s; medians')
    out.append(f'<rect x="{lx}" y="50" width="12" height="12" fill="#666"/>')
    out.append(f'<text x="{lx + 16}" y="60">user</text>')
    out.append(f'<rect x="{lx + 60}" y="50" width="12" height="12" fill="#666" '
               f'fill-opacity="0.35"/>')
    out.append(f'<text x="{lx + 76}" y="60">sys (kernel)</text>')

    def panel(y0, title, value_of, stacked):
        vals = []
        for sc in scenarios:
            for s in summary[sc].values():
                v = value_of(s)
                if v is not None:
                    vals.append(v[0] + v[1] if stacked else v)
        vmax, step = nice_axis(max(vals) if vals else 1)
        out.append(f'<text x="{left}" y="{y0 - 8}" font-size="13" font-weight="bold">'
                   f'{esc(title)}</text>')
        n = round(vmax / step)
        for i in range(n + 1):
            v = step * i
            y = y0 + panel_h - panel_h * v / vmax
            out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#ddd"/>')
            label = f"{v:,.0f}" if step >= 1 else f"{v:g}"
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                       f'fill="#555">{label}</text>')
        for gi, sc in enumerate(scenarios):
            gx = left + gi * group_w + (group_w - 3 * bar_w - 2 * gap) / 2
            for si, server in enumerate(SERVERS):
                s = summary[sc].get(server)
                if not s:
                    continue
                v = value_of(s)
                if v is None:
                    continue
                x = gx + si * (bar_w + gap)
                base = y0 + panel_h
                colour = COLOURS[server]
                if stacked:
                    user, sys_ = v
                    hu = panel_h * user / vmax
                    hs = panel_h * sys_ / vmax
                    out.append(f'<rect x="{x:.1f}" y="{base - hu:.1f}" width="{bar_w}" '
                               f'height="{hu:.1f}" fill="{colour}"><title>{server} {sc}: user '
                               f'{user:.2f} µs/req</title></rect>')
                    out.append(f'<rect x="{x:.1f}" y="{base - hu - hs:.1f}" width="{bar_w}" '
                               f'height="{hs:.1f}" fill="{colour}" fill-opacity="0.35">'
                               f'<title>{server} {sc}: sys {sys_:.2f} µs/req</title></rect>')
                    total = user + sys_
                    out.append(f'<text x="{x + bar_w / 2:.1f}" y="{base - hu - hs - 3:.1f}" '
                               f'text-anchor="middle" font-size="10">{total:.1f}</text>')
                else:
                    h = panel_h * v / vmax
                    out.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w}" '
                               f'height="{h:.1f}" fill="{colour}"><title>{server} {sc}: '
                               f'{v:,.0f} rps</title></rect>')
                    label = f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
                    out.append(f'<text x="{x + bar_w / 2:.1f}" y="{base - h - 3:.1f}" '
                               f'text-anchor="middle" font-size="10">{label}</text>')
            cx = left + gi * group_w + group_w / 2
            out.append(f'<text x="{cx:.1f}" y="{y0 + panel_h + 16}" text-anchor="middle">'
                       f'{esc(sc)}</text>')

    def cpu(s):
        if s["user_us"] is None:
            return None
        return (s["user_us"], s["sys_us"])

    panel(top + 30, "server CPU µs per request (lower is better; solid = user, light = sys)",
          cpu, True)
    panel(top + 30 + panel_h + panel_gap,
          "requests per second (higher is better; noisy on a shared machine)",
          lambda s: s["rps"], False)
    foot = top + 30 + 2 * panel_h + panel_gap + 40
    notes = ["CPU µs/req: utime+stime of all the server's threads over the run / requests completed.",
             "rps bars compare only within one scenario of one run."]
    if "latency" in scenarios:
        notes.append("latency: each server runs at half its own proxy-get maximum; "
                     "its rps bar is that offered rate.")
    for srv, s in summary.get("cache-hit", {}).items():
        if (s.get("backend_total_us") or 0) > 1.0:
            notes.append(f"cache-hit: {srv} did not answer from a cache (its backend was busy): "
                         "its bars are a proxied GET.")
    for i, note in enumerate(notes):
        out.append(f'<text x="{left}" y="{foot + 14 * i}" fill="#555">{esc(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cmd_progress(runs_path):
    run = load_runs(runs_path)[-1]
    m = metrics(run)
    print(
        f"  {run['scenario']:<10} round {run['round']} {run['server']:<8} "
        f"{m['rps']:>9,.0f} rps  p99 {fmt_ms(m['p99_ms'])} ms  "
        f"CPU {fmt(m['user_us'], 2)} user + {fmt(m['sys_us'], 2)} sys = "
        f"{fmt(m['total_us'], 2)} µs/req  ({m['cpu_cores'] * 100:.0f}% CPU)  "
        f"errors {m['errors']} non-2xx {m['non2xx']}",
        file=sys.stderr,
    )


def cmd_rate(runs_path, scenario, server, fraction):
    rps = [metrics(r)["rps"] for r in load_runs(runs_path)
           if r["scenario"] == scenario and r["server"] == server]
    if not rps:
        sys.exit(f"no {scenario} runs for {server}")
    print(max(1, int(statistics.median(rps) * float(fraction))))


def cmd_report(runs_path, meta_path, outdir):
    runs = load_runs(runs_path)
    for run in runs:
        run["metrics"] = metrics(run)
        del run["raw_path"]
    meta = json.loads(Path(meta_path).read_text())
    summary = summarise(runs)
    rats = ratios(summary)
    outdir = Path(outdir)
    md = table(meta, summary, rats)
    (outdir / "table.md").write_text(md)
    (outdir / "chart.svg").write_text(chart(meta, summary))
    (outdir / "results.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "ratios": rats, "runs": runs}, indent=2) + "\n")
    sys.stdout.write(md)


# A run whose server kept its cores at least this busy was limited by the server; below it, by
# the client or the backend (or a neighbour), and its rps say nothing about the server's limit.
SERVER_BOUND = 0.95


def scaling(results):
    """Per scenario and server, one row per worker count: rps, rps against the fewest workers',
    per-worker efficiency, CPU per request, cores busy and which side was the limit."""
    results = sorted(results, key=lambda r: r["meta"]["args"]["workers"])
    out = {}
    for res in results:
        n = res["meta"]["args"]["workers"]
        for scenario, by_server in res["summary"].items():
            for server, s in by_server.items():
                rows = out.setdefault(scenario, {}).setdefault(server, [])
                cores = s.get("cpu_cores")
                bound = None
                if cores is not None:
                    bound = "server" if cores >= SERVER_BOUND * n else "client"
                row = {"workers": n, "rps": s.get("rps"), "total_us": s.get("total_us"),
                       "user_us": s.get("user_us"), "cpu_cores": cores, "bound": bound}
                base = rows[0] if rows else row
                row["speedup"] = ratio(row["rps"], base["rps"])
                row["efficiency"] = ratio(row["speedup"], n / base["workers"])
                rows.append(row)
    return out


def scaling_table(results, rows):
    metas = [r["meta"] for r in results]
    m = metas[0]
    lines = [f"## ringgate scaling, {metas[0]['date']} to {metas[-1]['date']}", ""]
    lines.append(
        f"{m['machine']['nproc']} CPUs ({m['machine']['cpu_model']}), kernel "
        f"{m['machine']['kernel']}; ringgate on {m.get('ringgate_driver', 'unknown')}; "
        f"{m['args']['rounds']} round(s) x {m['args']['duration']} s per point. A point is "
        f"server-bound when the server kept at least {SERVER_BOUND:.0%} of its cores busy; "
        "a client-bound point's rps are the load generator's and the backend's limit, "
        "not the server's.")
    lines.append("")
    lines.append("Commands:")
    lines.append("")
    for meta in metas:
        lines.append(f"- `{meta['command']}`")
    for scenario, by_server in rows.items():
        lines.append("")
        lines.append(f"### {SCENARIO_TITLES.get(scenario, scenario)}")
        lines.append("")
        lines.append("| server | workers | rps | × fewest workers | per worker | CPU µs/req "
                     "| user µs/req | cores busy | limited by |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for server in SERVERS:
            for r in by_server.get(server, []):
                lines.append(
                    f"| {server} | {r['workers']} | {fmt(r['rps'], 0)} | {fmt_x(r['speedup'])} "
                    f"| {fmt_x(r['efficiency'])} | {fmt(r['total_us'], 2)} "
                    f"| {fmt(r['user_us'], 2)} | {fmt(r['cpu_cores'], 2)} "
                    f"| {r['bound'] or '–'} |")
    return "\n".join(lines) + "\n"


def scaling_chart(results, rows):
    """One panel per scenario: rps against workers, a line per server; a filled dot is a
    server-bound point, a hollow one client-bound; the dashed line is ringgate's first point
    times the workers."""
    meta = results[0]["meta"]
    scenarios = list(rows)
    panel_w, panel_h, gap = 360, 260, 70
    left, top = 80, 100
    width = left + len(scenarios) * (panel_w + gap)
    height = top + panel_h + 50
    most = max(r["meta"]["args"]["workers"] for r in results)
    out, lx = svg_start(
        width, height, left, "ringgate vs nginx vs HAProxy: rps by worker count",
        f'{esc(meta["machine"]["nproc"])} CPUs, kernel {esc(meta["machine"]["kernel"])}; '
        "workers on cores 0..N-1, wrk and the backend on the rest; "
        "filled = server-bound, hollow = client-bound")
    out.append(f'<line x1="{lx}" x2="{lx + 20}" y1="56" y2="56" stroke="#999" '
               f'stroke-dasharray="4 3"/>')
    out.append(f'<text x="{lx + 26}" y="60">ringgate x workers</text>')
    for pi, scenario in enumerate(scenarios):
        x0 = left + pi * (panel_w + gap)
        series = rows[scenario]
        rg = series.get("ringgate", [])
        ideal = rg[0]["rps"] / rg[0]["workers"] * most if rg and rg[0]["rps"] else 0
        peak = max([r["rps"] or 0 for srv in series.values() for r in srv] + [ideal])
        vmax, step = nice_axis(peak)

        def at(n, v, x0=x0, vmax=vmax):
            return x0 + panel_w * n / most, top + panel_h - panel_h * v / vmax

        out.append(f'<text x="{x0}" y="{top - 8}" font-size="13" font-weight="bold">'
                   f'{esc(scenario)}</text>')
        for i in range(round(vmax / step) + 1):
            _, y = at(0, step * i)
            out.append(f'<line x1="{x0}" x2="{x0 + panel_w}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#ddd"/>')
            out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
                       f'{step * i / 1000:,.0f}k</text>')
        for n in sorted({r["meta"]["args"]["workers"] for r in results}):
            x, y = at(n, 0)
            out.append(f'<text x="{x:.1f}" y="{y + 16:.1f}" text-anchor="middle">{n}</text>')
        x, y = at(most / 2, 0)
        out.append(f'<text x="{x:.1f}" y="{y + 32:.1f}" text-anchor="middle" fill="#555">'
                   f'workers</text>')
        if ideal:
            (x1, y1), (x2, y2) = at(0, 0), at(most, ideal)
            out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                       f'stroke="#999" stroke-dasharray="4 3"/>')
        for server in SERVERS:
            points = [r for r in series.get(server, []) if r["rps"] is not None]
            colour = COLOURS[server]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(r["workers"], r["rps"])
                                                            for r in points))
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"/>')
            for r in points:
                x, y = at(r["workers"], r["rps"])
                fill = colour if r["bound"] == "server" else "white"
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" '
                           f'stroke="{colour}" stroke-width="2"><title>{server}, '
                           f'{r["workers"]} workers: {r["rps"]:,.0f} rps, {r["bound"]}-bound'
                           f'</title></circle>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cmd_scaling(outdir, rundirs):
    results = [json.loads((Path(d) / "results.json").read_text()) for d in rundirs]
    if not results:
        sys.exit("scaling: no run directories given")
    results.sort(key=lambda r: r["meta"]["args"]["workers"])
    rows = scaling(results)
    md = scaling_table(results, rows)
    outdir = Path(outdir)
    (outdir / "scaling.md").write_text(md)
    (outdir / "scaling.svg").write_text(scaling_chart(results, rows))
    (outdir / "scaling.json").write_text(json.dumps(
        {"runs": [{"meta": r["meta"], "summary": r["summary"]} for r in results],
         "scaling": rows}, indent=2) + "\n")
    sys.stdout.write(md)


def main(argv):
    if len(argv) >= 2 and argv[1] == "progress" and len(argv) == 3:
        cmd_progress(argv[2])
    elif len(argv) == 6 and argv[1] == "rate":
        cmd_rate(*argv[2:])
    elif len(argv) == 5 and argv[1] == "report":
        cmd_report(*argv[2:])
    elif len(argv) >= 4 and argv[1] == "scaling":
        cmd_scaling(argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
