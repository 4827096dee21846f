#!/usr/bin/env python3
"""Compares brainstate-rs with JAX on the Hessian suite, as one markdown table.

Runs the suite of /work/shared/BENCHMARKS.md on both engines side by side, in
one run on one machine.

The two runners, both printing BENCHMARKS.md's JSON lines:

- JAX: ``python3 tools/bench_jax.py --each-process --cases ...`` (every case in
  a fresh process, each line with its own ``maxrss_mb``);
- Rust: ``cargo bench --bench suite -- --json --cases NAME``, built once with
  ``--no-run`` first, then run once per case, so each case gets a fresh
  process and its own peak memory (the runner's last line). A case the Rust
  runner does not know (it exits 2 with "unknown case" on stderr) is skipped,
  not fatal.

The table joins the lines on the case name:

    case | JAX median | ours median | ours/JAX | JAX first call | ours first call |
    ours/JAX | JAX maxrss MB | ours maxrss MB | checksums agree

"checksums agree": checksum and frobenius within relative 1e-9 (a complex
checksum within 1e-10 of its magnitude), and the same nnz for sparse cases.
Machine (CPUs, CPU model) and date are printed on top. Absolute times on the
shared 2-core machines drift by 2x from run to run: quote the ratios.

Options:
  --cases a,b,c              the cases to run (default: every case bench_jax.py
                             knows, i.e. both tables of BENCHMARKS.md)
  --order jax-first|rust-first   which engine runs first (default jax-first)
  --json-out FILE            also save the raw JSON lines of both engines (case
                             lines with their maxrss_mb merged in)
  --rust-json FILE           read the Rust lines from FILE instead of running
                             cargo (e.g. a saved --json-out file; lines whose
                             engine starts with "jax" are ignored)
  --jax-json FILE            read the JAX lines from FILE instead of running
                             bench_jax.py (lines of other engines are ignored)

Usage:  python3 tools/compare.py [--cases rosen_n16,mlp_1089] [--order rust-first]
        python3 tools/compare.py --rust-json raw.jsonl --jax-json raw.jsonl  # re-render
"""

import argparse
import ast
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_JAX = ROOT / "tools" / "bench_jax.py"

REL_TOL = 1e-9
REL_TOL_COMPLEX = 1e-10


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Reading runner output.
# ---------------------------------------------------------------------------

def jax_case_names():
    """The keys of bench_jax.py's CASES dict, read from its source (no jax import)."""
    tree = ast.parse(BENCH_JAX.read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "CASES" for t in node.targets)):
            return [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    raise SystemExit(f"error: no CASES dict in {BENCH_JAX}")


def parse_lines(text, keep=lambda engine: True):
    """Case lines (dicts) from runner stdout, each with "maxrss_mb".

    A line that carries "maxrss_mb" but no "case" reports the process that
    printed the case lines since the previous such line: when that process ran
    one case its peak is the case's own; when it ran several, each of them gets
    it with "maxrss_shared": true. Case lines that already have maxrss_mb keep it.
    """
    cases, group = [], []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            log(f"warning: ignoring a line that is not JSON: {raw[:80]}")
            continue
        if not keep(str(line.get("engine", ""))):
            continue
        if "case" in line:
            cases.append(line)
            group.append(line)
        elif "maxrss_mb" in line:
            for case in group:
                if case.get("maxrss_mb") is None:
                    case["maxrss_mb"] = line["maxrss_mb"]
                    if len(group) > 1:
                        case["maxrss_shared"] = True
            group = []
    return cases


def is_jax(engine):
    return engine.startswith("jax")


# ---------------------------------------------------------------------------
# Running the engines.
# ---------------------------------------------------------------------------

def run_jax(names):
    """bench_jax.py --each-process over the cases it knows; returns (lines, skipped)."""
    known = set(jax_case_names())
    todo = [n for n in names if n in known]
    skipped = {n: "unknown to bench_jax.py" for n in names if n not in known}
    if not todo:
        return [], skipped
    log(f"JAX: {len(todo)} case(s), one process each ...")
    proc = subprocess.run([sys.executable, str(BENCH_JAX), "--each-process",
                           "--cases", ",".join(todo)],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if proc.returncode != 0:
        log(f"warning: bench_jax.py exited {proc.returncode}")
    lines = parse_lines(proc.stdout, is_jax)
    for n in todo:
        if not any(l["case"] == n for l in lines):
            skipped[n] = "JAX run failed"
    return lines, skipped


def run_rust(names):
    """cargo bench, one process per case; returns (lines, skipped)."""
    log("Rust: building the suite (cargo bench --bench suite --no-run) ...")
    build = subprocess.run(["cargo", "bench", "--bench", "suite", "--no-run"], cwd=ROOT)
    if build.returncode != 0:
        raise SystemExit(f"error: building the Rust suite failed (exit {build.returncode})")
    lines, skipped = [], {}
    for n in names:
        log(f"Rust: {n} ...")
        proc = subprocess.run(["cargo", "bench", "--bench", "suite", "--",
                               "--json", "--cases", n],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode == 2 and "unknown case" in proc.stderr:
            log(f"Rust: {n} is unknown to the Rust runner; skipped")
            skipped[n] = "unknown to the Rust runner"
            continue
        # Pass on the runner's reference warnings, not cargo's (replayed) build output.
        for err in proc.stderr.splitlines():
            if "differs from the reference" in err:
                log(f"Rust: {err}")
        got = [l for l in parse_lines(proc.stdout, lambda e: not is_jax(e)) if l["case"] == n]
        if proc.returncode != 0 or not got:
            log(f"warning: Rust runner failed on {n} (exit {proc.returncode}):\n"
                + "\n".join(proc.stderr.splitlines()[-10:]))
            skipped[n] = f"Rust run failed (exit {proc.returncode})"
            continue
        lines.extend(got)
    return lines, skipped


def read_file(path, keep, names):
    lines = [l for l in parse_lines(Path(path).read_text(), keep) if l["case"] in names]
    skipped = {n: f"not in {path}" for n in names if not any(l["case"] == n for l in lines)}
    return lines, skipped


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------

def fmt_time(s):
    if s is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def fmt_ratio(ours, theirs):
    if ours is None or theirs is None or theirs == 0:
        return "—"
    return f"{ours / theirs:.3g}"


def fmt_rss(line):
    if line is None or line.get("maxrss_mb") is None:
        return "—"
    mb = line["maxrss_mb"]
    return (f"{mb:.0f}" if mb >= 100 else f"{mb:.1f}") + ("*" if line.get("maxrss_shared") else "")


def as_complex(checksum):
    if isinstance(checksum, list):
        return complex(checksum[0], checksum[1]), True
    return complex(checksum), False


def agreement(jax_line, rust_line):
    """'yes' or 'NO: ...' for the checksum, frobenius and (sparse) nnz."""
    problems = []
    (cj, complex_j), (cr, complex_r) = as_complex(jax_line["checksum"]), as_complex(rust_line["checksum"])
    tol = REL_TOL_COMPLEX if (complex_j or complex_r) else REL_TOL
    rel = abs(cr - cj) / abs(cj) if cj != 0 else abs(cr)
    if not rel <= tol:
        problems.append(f"checksum rel {rel:.2g}")
    fj, fr = jax_line["frobenius"], rust_line["frobenius"]
    rel = abs(fr - fj) / abs(fj) if fj != 0 else abs(fr)
    if not rel <= REL_TOL:
        problems.append(f"frobenius rel {rel:.2g}")
    nnz_j, nnz_r = jax_line.get("nnz"), rust_line.get("nnz")
    if nnz_j is not None or nnz_r is not None:
        if nnz_j != nnz_r:
            problems.append(f"nnz {nnz_r} vs JAX {nnz_j}")
    if problems:
        return "NO: " + "; ".join(problems)
    return "yes" + (f" (nnz {nnz_j})" if nnz_j is not None else "")


def machine_header():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"Machine: {cpus} CPUs (nproc), {model}; date {date}"


def render(names, jax_lines, rust_lines, skipped, order, sources):
    jax_by = {l["case"]: l for l in jax_lines}
    rust_by = {l["case"]: l for l in rust_lines}
    engines = [next((l["engine"] for l in ls), None) for ls in (jax_lines, rust_lines)]
    out = [machine_header(),
           f"Engines: {engines[0] or 'JAX: none'} vs {engines[1] or 'ours: none'}; "
           f"order {order}; " + (f"lines of both {sources[0]}" if sources[0] == sources[1]
                                  else f"JAX lines {sources[0]}, ours {sources[1]}"), ""]
    out.append("| case | JAX median | ours median | ours/JAX | JAX first call | ours first call "
               "| ours/JAX | JAX maxrss MB | ours maxrss MB | checksums agree |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    shared = False
    for n in names:
        j, r = jax_by.get(n), rust_by.get(n)
        if j is None and r is None:
            continue
        get = lambda line, k: None if line is None else line.get(k)  # noqa: E731
        if j is not None and r is not None:
            agree = agreement(j, r)
        else:
            agree = "n/a: " + (skipped.get(n) or "missing")
        shared |= bool(get(j, "maxrss_shared") or get(r, "maxrss_shared"))
        out.append(f"| {n} | {fmt_time(get(j, 'median_s'))} | {fmt_time(get(r, 'median_s'))} "
                   f"| {fmt_ratio(get(r, 'median_s'), get(j, 'median_s'))} "
                   f"| {fmt_time(get(j, 'first_call_s'))} | {fmt_time(get(r, 'first_call_s'))} "
                   f"| {fmt_ratio(get(r, 'first_call_s'), get(j, 'first_call_s'))} "
                   f"| {fmt_rss(j)} | {fmt_rss(r)} | {agree} |")
    if shared:
        out.append("")
        out.append("\\* peak of a process that ran several cases, not of this case alone.")
    missing = [n for n in names if n not in jax_by and n not in rust_by]
    if missing:
        out.append("")
        out.append("Not run by either engine: " + ", ".join(
            f"{n} ({skipped.get(n, 'missing')})" for n in missing))
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated cases (default: all of bench_jax.py's)")
    parser.add_argument("--order", choices=("jax-first", "rust-first"), default="jax-first",
                        help="which engine runs first (default jax-first)")
    parser.add_argument("--json-out", metavar="FILE", help="save the raw JSON lines here")
    parser.add_argument("--rust-json", metavar="FILE",
                        help="read the Rust lines from FILE instead of running cargo")
    parser.add_argument("--jax-json", metavar="FILE",
                        help="read the JAX lines from FILE instead of running bench_jax.py")
    opts = parser.parse_args()
    if opts.cases:
        names = list(dict.fromkeys(c.strip() for c in opts.cases.split(",") if c.strip()))
    else:
        names = jax_case_names()

    def jax_side():
        if opts.jax_json:
            return read_file(opts.jax_json, is_jax, names)
        return run_jax(names)

    def rust_side():
        if opts.rust_json:
            return read_file(opts.rust_json, lambda e: not is_jax(e), names)
        return run_rust(names)

    if opts.order == "jax-first":
        (jax_lines, jax_skipped), (rust_lines, rust_skipped) = jax_side(), rust_side()
    else:
        (rust_lines, rust_skipped), (jax_lines, jax_skipped) = rust_side(), jax_side()

    # Why a case is missing, per engine, for the table's last column.
    skipped = {}
    for n in names:
        why = [f"JAX: {jax_skipped[n]}" if n in jax_skipped else None,
               f"ours: {rust_skipped[n]}" if n in rust_skipped else None]
        skipped[n] = "; ".join(w for w in why if w)

    if opts.json_out:
        with open(opts.json_out, "w") as f:
            for line in jax_lines + rust_lines:
                f.write(json.dumps(line) + "\n")
        log(f"raw lines saved to {opts.json_out}")

    live = "run now, every case in its own process"
    sources = [f"read from {opts.jax_json}" if opts.jax_json else live,
               f"read from {opts.rust_json}" if opts.rust_json else live]
    print(render(names, jax_lines, rust_lines, skipped, opts.order, sources))


if __name__ == "__main__":
    main()
