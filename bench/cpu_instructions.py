"""Instructions per Binance diff, per stage: bench/cpu_stages.py counted by callgrind.

Wall and CPU times on a shared machine move by tens of percent with the load; instruction
counts do not (callgrind simulates the CPU: the same code on the same stream gives the same
count to within a fraction of a percent). So this is the bench for finding and checking cuts
in the per-message path; cpu_stages.py and cpu_per_msg.py say what they cost in time.

It runs `cpu_stages.py --marks` under `valgrind --tool=callgrind --dump-before=getppid`
(PYTHONMALLOC=malloc, so malloc's work is counted as the real one, not pymalloc's arenas):
each stage's one run sits between two os.getppid() calls, so its instructions are one dump of
their own. The stages are cpu_stages.py's, with the same subtractions. `--baseline TREE` runs
the same stages over the same stream on another checkout's code (built in place) first, for
a before/after side by side. Valgrind runs the interpreter about 50x slower: keep --messages
small (2000 is a few minutes under load; the counts per message barely move with it).

Usage: python bench/cpu_instructions.py [--books 2] [--messages 2000] [--pure] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cpu_stages import RUNS, stages  # noqa: E402

TIMEOUT_S = 3600


def count(tree: Path, books: int, messages: int, pure: bool) -> tuple[dict, int, float]:
    """(instructions per message per stage, messages, eventfd writes per message)."""
    with tempfile.TemporaryDirectory(prefix="cpu-instr-") as workdir:
        out = Path(workdir) / "cg"
        cmd = ["valgrind", "--tool=callgrind", "--dump-before=getppid",
               f"--callgrind-out-file={out}", sys.executable,
               str(HERE / "cpu_stages.py"), "--marks", "--books", str(books),
               "--messages", str(messages)] + (["--pure"] if pure else [])
        env = dict(os.environ, PYTHONMALLOC="malloc", OBSERVER_TREE=str(tree))
        done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        if done.returncode != 0:
            raise SystemExit(f"cpu_instructions: {tree}: exit {done.returncode}: "
                             f"{done.stderr.strip().splitlines()[-1:]}")
        line = done.stdout.strip().splitlines()[-1]
        msgs = int(re.search(r"(\d+) msgs", line).group(1))
        wakes = float(re.search(r"eventfd writes/msg ([\d.]+)", line).group(1))
        dumps = sorted(Path(workdir).glob("cg.*"), key=lambda p: int(p.suffix[1:]))
        totals = [int(re.search(r"^totals: (\d+)", p.read_text(), re.M).group(1))
                  for p in dumps]
    # Dump k holds what ran since the mark before it: the runs are dumps 2, 4, ... (1 is
    # start-up, the odd ones the set-up between runs).
    runs = totals[1::2][:len(RUNS)]
    if len(runs) != len(RUNS):
        raise SystemExit(f"cpu_instructions: {len(totals)} dumps, expected {2 * len(RUNS)}+")
    per = stages([n / msgs for n in runs], wakes)
    return per, msgs, wakes


def line(label: str, per: dict, wakes: float) -> str:
    parts = "  ".join(f"{name} {n:,.0f}" for name, n in per.items())
    return f"{label}: instructions/msg: {parts}  (eventfd writes/msg {wakes:.2f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--books", type=int, default=2)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--pure", action="store_true", help="the pure-Python reference paths")
    p.add_argument("--baseline", type=Path, help="another checkout, counted first")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("cpu_instructions: valgrind is not installed")
    mode = "pure Python" if args.pure else "compiled where built"
    print(f"cpu_instructions: {args.books} books, {args.messages} Binance diffs ({mode}), "
          f"callgrind, PYTHONMALLOC=malloc")
    trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("this", HERE.parent)]
    for label, tree in trees:
        per, _, wakes = count(tree, args.books, args.messages, args.pure)
        print(line(label, per, wakes), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
