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
    ops, model, compiled = (_read_rows(out / f) for f in ("ops.jsonl", "model.jsonl", "compile.jsonl"))
    summary = {"parts": parts, "environment": env, "ops": ops, "model": model + compiled}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")

    lines = ["# shg_fast GPU check", "",
             f"- device: {env.get('device_name', '?')} ({env.get('capability', 'no GPU')}), driver "
             f"{env.get('gpu', {}).get('driver') or env.get('nvidia_smi', {}).get('driver_version', '?')}",
             f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Triton {env.get('triton')}, "
             f"Python {env.get('python')}, numpy {env.get('numpy')}",
             f"- clocks/power: {env.get('gpu') or env.get('nvidia_smi') or 'n/a'}", ""]
    if any(r.get("smoke") for r in ops + model):
        lines += ["**CPU smoke run: tiny cases that only exercise the code; none of these figures is a "
                  "measurement of anything.**", ""]
    lines += ["## Parts", "", "| part | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {p['part']} | {p['status']} | {p['seconds']:.0f} | {p['note']} |" for p in parts]
    lines += ["", "## Fused ops vs ATen/cuDNN (ms per batch, median; CUDA events on a GPU)", "",
              "Residual blocks: `predicted` is the H200 PREDICTION of that backend (shg_fast/predictions.py; "
              "`roofline` the block's own), next to the measured `ms`.", "",
              "| op | shape | dtype | batch | backend | ms | predicted | roofline | vs aten | max rel err vs fp64 | "
              "status |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ops:
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['batch']} | {r['backend']} "
                     f"{r.get('h200_tiling', '')} | {_fmt(r.get('ms_per_batch_median'), '.3f')} | "
                     f"{_fmt(r.get('h200_predicted_ms'), '.3f')} | {_fmt(r.get('h200_roofline_ms'), '.3f')} | "
                     f"{_fmt(r.get('speedup_vs_aten'), '.2f')} | "
                     f"{_fmt(r.get('max_rel_error_vs_fp64'), '.1e')} | {r['status']} {r.get('reason', '')[:80]} |")
    lines += ["", "## Whole model (ms per image)", "",
              "| variant | stacks | size | dtype | batch | ms/image | images/s | vs reference | agrees | status |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in model + compiled:
        lines.append(f"| {r['variant']} | {r.get('stacks')} | {r.get('size')} | {r['dtype']} | {r['batch']} | "
                     f"{_fmt(r.get('ms_per_image'), '.2f')} | {_fmt(r.get('images_per_s'), '.1f')} | "
                     f"{_fmt(r.get('speedup_vs_reference'), '.2f')} | {r.get('agrees', '')} | "
                     f"{r['status']} {r.get('error', '')[:80]} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/gpu_check_report.py OUT_DIR")
    sys.exit(cmd_report(pathlib.Path(sys.argv[1])))
