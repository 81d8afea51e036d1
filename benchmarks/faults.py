"""Fault suite, the long run: builds killed at random moments, and damaged files.

    .venv/bin/python benchmarks/faults.py [--kills 20] [--docs 400] [--seed 0]

1. Builds the bundled parens corpus with the shipped model once, uninterrupted (the
   reference), timing it.
2. `--kills` times: starts the same build as a separate process, sends it SIGKILL after a
   random delay between 0 and the reference's duration, then runs the same command again
   with `--resume` (a kill before the plan was saved needs the full command, which is what a
   user runs) and compares the result with the reference: every table a reader sees, every
   stored state and every file but the row databases, byte for byte.
3. For each kind of file of the reference (database, rows, states, FAISS, statistics,
   model): truncates it, flips 8 bytes in its middle, deletes it, and runs the query
   commands; counts tracebacks and silent wrong answers (exit 0 with another output).

Prints the counts (goal: 20/20 identical, 0 tracebacks, 0 silent wrong answers) and the
machine's load average.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lstmsearch.index import open_index  # noqa: E402

MODEL = ROOT / "data" / "models" / "parens-lstm.pt"
TABLES = {"documents": "doc", "tokens": "pos", "tracks": "name, pos", "vocab": "token_id",
          "unit_stats": "layer, kind, unit", "unit_on": "layer, kind, unit, threshold",
          "unit_top": "layer, kind, unit, lowest, rank"}
QUERIES = [
    ["match", "{index}", "--start", "20", "--end", "23", "--threshold", "0.2", "--layer", "0",
     "--kind", "c", "--json"],
    ["nearest", "{index}", "--start", "20", "--end", "23", "--layer", "0", "--kind", "h",
     "--json"],
    ["neurons", "{index}", "--unit", "3", "--layer", "0", "--kind", "c", "--above", "0.5",
     "--json"],
    ["neurons", "{index}", "--layer", "0", "--kind", "c", "--correlate", "depth", "--json"],
    ["sql", "{index}", "SELECT count(*), sum(token_id) FROM tokens", "--json"],
    ["info", "{index}", "--json"],
]


def command(out: Path, docs: int, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "lstmsearch.cli", "index", "--out", str(out)]
    if resume:
        return args + ["--resume"]
    return args + ["parens", "--model", str(MODEL), "--limit", str(docs),
                   "--segment-tokens", "8192", "--segment-docs", "4"]


def fingerprint(path: Path) -> dict:
    """What must not depend on how the build ran."""
    out = {}
    with open_index(path) as index:
        for table, order in TABLES.items():
            rows = index.sql(f"SELECT * FROM {table} ORDER BY {order}", max_rows=None).rows
            if table == "tracks":  # float32 loss: compare to its precision
                rows = [(n, p, None if v is None else round(v, 4), lab) for n, p, v, lab in rows]
            out[table] = hashlib.sha256(repr(rows).encode()).hexdigest()
        for name in index.state_names:
            out[name] = hashlib.sha256(index.states(name).tobytes()).hexdigest()
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name not in ("rows.duckdb", "index.duckdb", "write.lock"):
            out[str(f.relative_to(path))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_queries(index: Path) -> list[tuple[int, str, str]]:
    out = []
    for q in QUERIES:
        proc = subprocess.run([sys.executable, "-m", "lstmsearch.cli",
                               *[a.format(index=index) for a in q]], capture_output=True,
                              text=True, timeout=300, cwd=ROOT)
        out.append((proc.returncode, proc.stdout.replace(str(index), "INDEX"), proc.stderr))
    return out


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        data = bytearray(path.read_bytes())
        m = len(data) // 2
        data[m : m + 8] = bytes(b ^ 0xA5 for b in data[m : m + 8])
        path.write_bytes(bytes(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference = tmp / "reference"
        t0 = time.perf_counter()
        subprocess.run(command(reference, args.docs), check=True, capture_output=True, env=env,
                       cwd=ROOT)
        full = time.perf_counter() - t0
        want = fingerprint(reference)
        print(f"reference build: {args.docs} documents in {full:.1f} s "
              f"(load average {os.getloadavg()[0]:.2f})")
        identical = 0
        for i in range(args.kills):
            out = tmp / f"killed-{i}"
            delay = rng.uniform(0, full)
            proc = subprocess.Popen(command(out, args.docs), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            finished = proc.wait() == 0
            again = subprocess.run(command(out, args.docs, resume=True), capture_output=True,
                                   text=True, env=env, cwd=ROOT)
            how = "--resume"
            if again.returncode != 0:  # killed before the plan: the full command again
                again = subprocess.run(command(out, args.docs), capture_output=True, text=True,
                                       env=env, cwd=ROOT)
                how = "the same command"
            same = again.returncode == 0 and fingerprint(out) == want
            identical += same
            print(f"kill {i + 1:2d} after {delay:5.2f} s"
                  f"{' (build had finished)' if finished else ''}: finished by {how}, "
                  f"{'identical' if same else 'DIFFERENT: ' + again.stderr.strip()[-200:]}")
            shutil.rmtree(out, ignore_errors=True)
        expected = run_queries(reference)
        tracebacks = silent = noticed = cases = 0
        kinds = {"database": "index.duckdb", "rows": "segments/seg-000001/rows.duckdb",
                 "states": "segments/seg-000001/layers.0.c.f16",
                 "faiss": "segments/seg-000001/layers.0.h.faiss",
                 "segment checksums": "segments/seg-000001/checksums.npz",
                 "codebook": "codebooks/layers.0.h.faiss",
                 "model": "model.pt"}
        for kind, rel in kinds.items():
            for how in ("truncate", "flip", "delete"):
                copy = tmp / "damaged"
                shutil.copytree(reference, copy)
                damage(copy / rel, how)
                got = run_queries(copy)
                cases += 1
                tracebacks += sum("Traceback" in err for _, _, err in got)
                silent += sum(code == 0 and out != want_out
                              for (code, out, _), (_, want_out, _) in zip(got, expected,
                                                                           strict=True))
                seen = any(code != 0 for code, _, _ in got)
                noticed += seen
                if not seen:
                    print(f"{how} of {kind} ({rel}): every answer unchanged")
                shutil.rmtree(copy)
        print(f"killed builds finished identical: {identical}/{args.kills}")
        print(f"damaged files: {cases} cases x {len(QUERIES)} commands: {tracebacks} tracebacks, "
              f"{silent} silent wrong answers, noticed in {noticed}/{cases} cases")
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
