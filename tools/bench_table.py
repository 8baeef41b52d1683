#!/usr/bin/env python3
"""One table from the JSON lines of `clipcu-bench train --json` and `tools/bench_torch.py --json`.

    python3 tools/bench_table.py results.jsonl

Per case (config, batch, precision) and engine it keeps the fastest round (an error line only where
no round ran) and prints pairs/s, step median/p10/p90, MFU, peak memory, bytes per parameter and
clipcu's pairs/s over each other engine's. Needs only the standard library.
"""
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
best = {}  # per (case, engine): the fastest round; an error only where no round ran
for r in rows:
    key = (r["config"], r["batch"], r["precision"], r["engine"])
    old = best.get(key)
    if old is None or "error" in old or ("error" not in r and r["pairs_per_s"] > old["pairs_per_s"]):
        best[key] = r
cases = sorted({k[:3] for k in best}, key=lambda k: (k[0], k[1], k[2]))
print(f"{'case':<26} {'engine':<18} {'pairs/s':>9} {'median ms':>10} {'p10':>8} {'p90':>8} {'MFU':>6} {'peak MiB':>9} {'B/param':>8} {'clipcu ×':>9}")
for case in cases:
    ours = best.get(case + ("clipcu",), {})
    for (c, b, p, engine), r in sorted(best.items(), key=lambda kv: kv[0][3] != "clipcu"):
        if (c, b, p) != case:
            continue
        name = f"{c} b{b} {p}"
        if "error" in r:
            print(f"{name:<26} {engine:<18} {r['error']}")
            continue
        s = r["step"]
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        mem = r.get("peak_memory_bytes")
        ratio = ""
        if engine != "clipcu" and "pairs_per_s" in ours:
            ratio = f"{ours['pairs_per_s'] / r['pairs_per_s']:.2f}"
        print(f"{name:<26} {engine:<18} {r['pairs_per_s']:>9.1f} {s['median_ms']:>10.2f} {s['p10_ms']:>8.2f} "
              f"{s['p90_ms']:>8.2f} {mfu:>6} {mem / 2**20 if mem else float('nan'):>9.1f} "
              f"{r.get('bytes_per_parameter') or float('nan'):>8.1f} {ratio:>9}")
print(f"(clipcu × = clipcu's pairs/s over that engine's, same case, same sitting; JSON: {sys.argv[1]})")
