"""Regenerate the "## Results" section of README.md from benchmark JSON-lines files.

Reads every line that parses as a JSON object from the given files (the scripts' stdout, saved
with ``> results.jsonl``; their tables and other lines are skipped), groups the measurements by
script (bench_stages, bench_decoder, bench_e2e, bench_attention, bench_scan), writes one
markdown table each, and replaces what lies between ``<!-- results:start -->`` and
``<!-- results:end -->`` in the README (the markers are appended at its end when absent).
Later lines win over earlier ones for the same measurement, so files can be given oldest first.

    python benchmarks/report.py stages.jsonl decoder.jsonl e2e.jsonl [--readme README.md] [--print]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import reference_row  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def read_rows(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(_mark_view(row))
    return rows


def _mark_view(row: dict) -> dict:
    """A row measured under avx2_view.py (cpu_view) named apart from the native one: its stage,
    engine, config, impl or job gets " [avx2_view]", so the two are separate table rows."""
    view = row.get("cpu_view", "native")
    if view == "native":
        return row
    mark = f" [{view}]"
    for key in ("stage", "engine", "config", "impl", "job"):
        value = row.get(key)
        if isinstance(value, str) and value != "machine" and not value.endswith(mark):
            row[key] = value + mark
    return row


def _latest(rows: list[dict], key: str) -> list[dict]:
    """The last row per value of `key`, in first-seen order."""
    seen: dict[str, dict] = {}
    for row in rows:
        seen[row[key]] = row
    return list(seen.values())


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _env(row: dict) -> str:
    versions = [
        f"{k} {row[k]}"
        for k in ("onnxruntime", "torch", "numpy", "transformers", "onnxruntime_genai")
        if k in row
    ]
    flags = f" ({', '.join(row['cpu_flags'])})" if row.get("cpu_flags") else ""
    return (
        f"{row.get('cpu', '?')}{flags}, {row.get('threads', '?')} threads, "
        f"{row.get('provider', 'CPU')}, {', '.join(versions)}, commit {row.get('commit', '?')}"
    )


VIEW_NOTE = (
    "rows marked [avx2_view]: this CPU with AVX-512, VNNI and AMX hidden, [avx512-novnni_view]: "
    "with VNNI, BF16 and AMX hidden (avx2_view.py)"
)


def _natives(rows: list[dict]) -> list[dict]:
    """The rows measured without avx2_view.py."""
    return [r for r in rows if r.get("cpu_view", "native") == "native"]


def _env_of(rows: list[dict]) -> str:
    """_env of the section's last native row (else its last row), saying so when some rows were
    measured under avx2_view."""
    natives = _natives(rows)
    env = _env(natives[-1] if natives else rows[-1])
    return env + ("; " + VIEW_NOTE if len(natives) < len(rows) else "")


def stages_section(rows: list[dict]) -> list[str]:
    machine = [r for r in rows if r.get("stage") == "machine"]
    stages = _latest([r for r in rows if r.get("stage") != "machine"], "stage")
    out = ["### Stages (bench_stages.py)", ""]
    if machine:
        m = machine[-1]
        out += [
            f"{_env(m)}; model `{m.get('model')}` ({m.get('precision')}); prompt "
            f"{m.get('prompt_length')} positions. Measured peaks: ORT fp32 MatMul "
            f"{m['fp32_matmul_flops'] / 1e9:.0f} GFLOP/s, int8 MatMulInteger "
            f"{m['int8_matmul_flops'] / 1e9:.0f} GOP/s, numpy copy "
            f"{m['copy_bandwidth_bytes'] / 1e9:.1f} GB/s.",
            "",
        ]
    body = [
        [
            r["stage"],
            f"{r['median_s']:.4g}",
            f"{r['min_s']:.4g}",
            f"{r['flops'] / 1e9:.1f}",
            f"{r['bytes'] / 1e6:.0f}",
            f"{r['floor_s']:.4g}",
            r["bound"],
            f"{r['x_above_floor']:.1f}",
        ]
        for r in stages
    ]
    header = ["stage", "median s", "min s", "GFLOP", "MB", "floor s", "bound", "x above floor"]
    return out + _table(header, body)


def decoder_section(rows: list[dict]) -> list[str]:
    rows = _latest(rows, "engine")
    base = next((r for r in rows if r["engine"] == "transformers fp32"), None)
    genai = next((r for r in rows if r["engine"].startswith("onnxruntime-genai")), None)
    out = ["### Decoder alone (bench_decoder.py)", ""]
    out += [f"{_env_of(rows)}; prompt {rows[-1].get('prompt_length')} tokens.", ""]
    body = []
    for r in rows:
        p, d = r["prefill_median_s"], r["decode_tokens_per_s"]
        body.append(
            [
                r["engine"],
                f"{p:.2f}",
                f"{d:.1f}",
                _f(base and base["prefill_median_s"] / p, ".2f"),
                _f(base and d / base["decode_tokens_per_s"], ".2f"),
                _f(genai and genai["prefill_median_s"] / p, ".2f"),
                _f(genai and d / genai["decode_tokens_per_s"], ".2f"),
            ]
        )
    header = ["engine", "prefill s", "decode tok/s", "prefill x tf32", "decode x tf32"]
    header += ["prefill x genai", "decode x genai"]
    return out + _table(header, body) + ["", "x = speed relative to that engine (>1 faster)."]


def e2e_section(rows: list[dict]) -> list[str]:
    rows = _latest(rows, "config")
    out = ["### Video -> answer (bench_e2e.py)", ""]
    out += [f"{_env_of(rows)}; up to {rows[-1].get('max_new_tokens')} new tokens.", ""]
    body = []
    for r in rows:
        base = reference_row(r, rows)  # under avx2_view: the reference under the same view
        st, tps = r["stages_median_s"], r["decode_tokens_per_s"]
        base_tps = base["decode_tokens_per_s"]
        body.append(
            [
                r["config"],
                f"{r['ttft_median_s']:.2f}",
                f"{base['ttft_median_s'] / r['ttft_median_s']:.2f}",
                _f(tps, ".2f"),
                _f(tps / base_tps if tps and base_tps else None, ".2f"),
                f"{st['vision']:.2f}",
                f"{st['prefill']:.2f}",
                f"{r['peak_rss_mib']:.0f}",
            ]
        )
    header = ["configuration", "ttft s", "ttft x ref", "decode tok/s", "decode x ref"]
    header += ["vision s", "prefill s", "peak RSS MiB"]
    return out + _table(header, body)


def scan_section(rows: list[dict]) -> list[str]:
    """The native op once per instruction set (with its FMA floor when measured), then the
    portable graph and the torch reference; times relative to the widest set's."""
    latest: dict[tuple, dict] = {}
    for r in rows:  # rows from before bench_scan timed each instruction set carry no "isa"
        latest[(r["impl"], r.get("isa"))] = r
    rows = list(latest.values())
    natives = [r for r in rows if r["impl"] == "ort_native_op"]
    base = natives[-1] if natives else rows[0]
    out = [
        "### Selective scan (bench_scan.py)",
        "",
        f"{_env_of(rows)}; shape {rows[-1]['shape']}. Floor: "
        f"{base.get('floor_fma_ops_per_update', '?')} FMA-pipe operations per state update at "
        "the FMA peak measured at each width (benchmarks/floors.py).",
    ]
    body = [
        [
            r["impl"],
            r.get("isa", "-"),
            f"{r['median_ms']:.2f}",
            _f(r.get("floor_ms"), ".2f"),
            _f(r.get("x_floor"), ".2f"),
            f"{r['median_ms'] / base['median_ms']:.2f}",
        ]
        for r in rows
    ]
    header = ["implementation", "isa", "median ms", "floor ms", "x floor", "x widest native"]
    return out + [""] + _table(header, body)


def attention_section(rows: list[dict]) -> list[str]:
    """One table per machine: mvgpt's (per instruction set, where the rows name it) and
    onnxruntime's attention op, per thread count."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(r.get("host"), r.get("cpu"), r["threads"], r["engine"], r.get("isa", "-"))] = r
    out = ["### Decode attention alone (bench_attention.py)", ""]
    machines = list(dict.fromkeys((k[0], k[1]) for k in latest))
    for host, cpu in machines:
        mine = [r for k, r in latest.items() if (k[0], k[1]) == (host, cpu)]
        natives = _natives(mine)
        first = (natives or mine)[0]
        view = f"; {VIEW_NOTE}" if len(natives) < len(mine) else ""
        out += [
            f"{cpu} ({', '.join(first.get('cpu_flags') or ['flags not recorded'])}), "
            f"onnxruntime {first.get('onnxruntime')}, commit {first.get('commit')}; "
            f"{first['layers']} layers' caches, one position after {first['past']} "
            f"({first['cache_bytes'] / 1e6:.0f} MB){view}.",
            "",
        ]
        body = []
        for r in mine:
            ref = latest.get((host, cpu, r["threads"], "onnxruntime", "-"))
            body.append(
                [
                    str(r["threads"]),
                    r["engine"],
                    r.get("isa", "-"),
                    f"{r['step_median_s'] * 1e3:.2f}",
                    f"{r['floor_s'] * 1e3:.2f}",
                    f"{r['step_median_s'] / r['floor_s']:.1f}",
                    _f(ref and ref["step_median_s"] / r["step_median_s"], ".2f"),
                ]
            )
        header = ["threads", "op", "isa", "median ms", "floor ms", "x above floor", "x onnxruntime"]
        out += _table(header, body) + [""]
    return out[:-1]


def export_memory_section(rows: list[dict]) -> list[str]:
    rows = _latest(rows, "job")
    out = ["### Export memory (bench_export_memory.py)", ""]
    out += [
        f"{_env_of(rows)}; `mvgpt-export`'s work in one process on an existing random checkpoint "
        "in the official layout; peak RSS is the process's ru_maxrss.",
        "",
    ]
    body = [
        [
            r["size"] + (f" ({r['layers']} layers)" if r.get("layers") else ""),
            r["precision"],
            f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_rss_mib'] / 1024:.1f}",
            f"{r['seconds']:.0f}",
            f"{r['peak_between'][0]} -> {r['peak_between'][1]}",
        ]
        for r in rows
    ]
    header = ["model", "precision", "peak RSS MiB", "GiB", "export s", "peak between"]
    return out + _table(header, body)


def render(rows: list[dict]) -> str:
    groups = {
        "stages": [r for r in rows if r.get("bench") == "stages"],
        "decoder": [r for r in rows if r.get("bench") == "decoder"],
        "e2e": [r for r in rows if r.get("bench") == "e2e"],
        "attention": [r for r in rows if r.get("bench") == "attention"],
        "scan": [r for r in rows if "impl" in r and "updates_per_s" in r],
        "export_memory": [
            {**r, "job": f"{r['size']}/{r.get('layers')}/{r['precision']}"}
            for r in rows
            if r.get("bench") == "export_memory_summary"
        ],
    }
    builders = {
        "stages": stages_section,
        "decoder": decoder_section,
        "e2e": e2e_section,
        "attention": attention_section,
        "scan": scan_section,
        "export_memory": export_memory_section,
    }
    lines = ["## Results", "", "Generated by `benchmarks/report.py`; medians, CPU only.", ""]
    for name, group in groups.items():
        if group:
            lines += builders[name](group) + [""]
    return "\n".join(lines).rstrip() + "\n"


def replace_section(text: str, section: str) -> str:
    block = f"{START}\n{section}{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        return head + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="JSON-lines result files")
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--print", action="store_true", help="print the section, write nothing")
    args = parser.parse_args(argv)
    rows = read_rows(args.files)
    if not rows:
        print("no JSON lines found in the given files", file=sys.stderr)
        return 1
    section = render(rows)
    if args.print:
        sys.stdout.write(section)
        return 0
    readme = Path(args.readme)
    readme.write_text(replace_section(readme.read_text(encoding="utf-8"), section), "utf-8")
    print(f"wrote the results section of {readme} ({len(rows)} measurements)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
