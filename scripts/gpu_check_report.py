"""The report of scripts/gpu_check.sh: OUT_DIR's parts.tsv, env.json and *.jsonl (written by
scripts/gpu_check.py) into summary.json and summary.md. No torch import, so it is cheap to run
after every part.

    python scripts/gpu_check_report.py OUT_DIR
"""

from __future__ import annotations

import json
import pathlib
import sys


def _read_rows(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def cmd_report(out: pathlib.Path) -> int:
    parts = []
    parts_file = out / "parts.tsv"
    if parts_file.exists():
        for line in parts_file.read_text(encoding="utf-8").splitlines():
            name, status, seconds, note = (line.split("\t") + ["", "", ""])[:4]
            parts.append({"part": name, "status": status, "seconds": float(seconds or 0), "note": note})
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").exists() else {}
    ops, model, peers, kernels = (_read_rows(out / f) for f in ("ops.jsonl", "model.jsonl", "peers.jsonl",
                                                                "kernels.jsonl"))
    # A compile cut by the part's time box left only its 'started' row.
    finished = {(r["variant"], r["dtype"], r["batch"]) for r in peers if r["status"] != "started"}
    peers = [dict(r, status="timeout", error="cut by the part's time box while compiling")
             if r["status"] == "started" and (r["variant"], r["dtype"], r["batch"]) not in finished else r
             for r in peers if r["status"] != "started" or (r["variant"], r["dtype"], r["batch"]) not in finished]
    summary = {"parts": parts, "environment": env, "ops": ops, "model": model, "peers": peers, "kernels": kernels}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")

    lines = ["# shg_fast GPU check", "",
             f"- device: {env.get('device_name', '?')} ({env.get('capability', 'no GPU')}), driver "
             f"{env.get('gpu', {}).get('driver') or env.get('nvidia_smi', {}).get('driver_version', '?')}",
             f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Triton {env.get('triton')}, "
             f"Python {env.get('python')}, numpy {env.get('numpy')}",
             f"- clocks/power: {env.get('gpu') or env.get('nvidia_smi') or 'n/a'}",
             f"- PREDICTIONS use the {env.get('roofline_profile', {}).get('device', '?')} profile "
             f"({env.get('roofline_profile', {}).get('device_reason', 'not recorded')})", ""]
    if any(r.get("smoke") for r in ops + model + peers):
        lines += ["**CPU smoke run: tiny cases that only exercise the code; none of these figures is a "
                  "measurement of anything.**", ""]
    lines += ["## Parts", "", "| part | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {p['part']} | {p['status']} | {p['seconds']:.0f} | {p['note']} |" for p in parts]
    lines += ["", "## Fused ops vs ATen/cuDNN (ms per batch, median; CUDA events on a GPU)", "",
              "Residual blocks: `predicted` is the PREDICTION of that backend (shg_fast/roofline.py; "
              "`roofline` the block's own), next to the measured `ms`.", "",
              "| op | shape | dtype | batch | backend | ms | predicted | roofline | vs aten | max rel err vs fp64 | "
              "status |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ops:
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['batch']} | {r['backend']} "
                     f"{r.get('pred_tiling', '')} | {_fmt(r.get('ms_per_batch_median'), '.3f')} | "
                     f"{_fmt(r.get('pred_predicted_ms'), '.3f')} | {_fmt(r.get('pred_roofline_ms'), '.3f')} | "
                     f"{_fmt(r.get('speedup_vs_aten'), '.2f')} | "
                     f"{_fmt(r.get('max_rel_error_vs_fp64'), '.1e')} | {r['status']} {r.get('reason', '')[:80]} |")
    best_peer: dict[tuple, float] = {}
    for r in peers:
        if r.get("ms_per_image"):
            key = (r["dtype"], r["batch"])
            best_peer[key] = min(best_peer.get(key, float("inf")), r["ms_per_image"])
    lines += ["", "## Whole model and its peers (ms per image)", "",
              "`vs best peer`: the fastest of the reference eager (channels_last, cudnn.benchmark), under a CUDA "
              "graph, and torch.compile max-autotune at that dtype and batch, over this row's time.", "",
              "| variant | stacks | size | dtype | batch | ms/image | images/s | vs best peer | agrees | status |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in model + peers:
        peer = best_peer.get((r["dtype"], r["batch"]))
        vs = peer / r["ms_per_image"] if peer and r.get("ms_per_image") else None
        lines.append(f"| {r['variant']} | {r.get('stacks')} | {r.get('size')} | {r['dtype']} | {r['batch']} | "
                     f"{_fmt(r.get('ms_per_image'), '.2f')} | {_fmt(r.get('images_per_s'), '.1f')} | "
                     f"{_fmt(vs, '.2f')} | {r.get('agrees', '')} | "
                     f"{r['status']} {(r.get('error') or r.get('reason') or '')[:80]} |")
    mapped = [r for r in kernels if r.get("mapped")]
    lines += ["", "## Per-step device times vs PREDICTIONS (us per call; profiler, prepacked weights)", "",
              "| dtype | batch | step | op | tactic | device us | predicted us | measured / predicted |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['batch']} | {r['step']} | {r['op']} | {r['tactic']} | "
              f"{_fmt(r.get('device_us'), '.1f')} | {_fmt(r.get('predicted_us'), '.1f')} | "
              f"{_fmt(r.get('measured_over_predicted'), '.2f')} |" for r in mapped]
    lines += [f"| {r['dtype']} | {r['batch']} | (unmapped) {r['kernel']} x{r['count']} | | | "
              f"{_fmt(r.get('device_us_total'), '.1f')} | | |" for r in kernels if not r.get("mapped")]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/gpu_check_report.py OUT_DIR")
    sys.exit(cmd_report(pathlib.Path(sys.argv[1])))
