"""Benchmark the streamed rewrite against `cp` + `sync` on synthetic sharded checkpoints.

For Llama-shaped bf16 checkpoints of about 1, 2 and 4 GB (written here, random bytes), it runs,
side by side and interleaved, `cp -r` + `sync`, the identity rewrite (every byte passes through)
and an FFN-pruned rewrite (5632 -> 4096 channels), all as subprocesses of the real CLI, with the
checkpoint's pages evicted before each run (`--evict all` drops the whole page cache instead, so
the tool's own install is read cold too). It prints throughput in GB/s of source bytes, the ratio
to cp (paired per round), and the peak anonymous (RssAnon) and file-backed (RssFile) memory of the
rewrite, sampled from /proc, since mmap'd file pages are not a cost the kernel cannot reclaim; the
child process that draws the report's plots is added in, by proportional set size (Pss_Anon), so the
copy-on-write pages it shares with the rewrite count once. It also times the CLI on a 3 MB checkpoint,
the fixed cost of a run (Python start-up, imports, the report's plots, fsync), and prints the
ratios without it. The tool's bytecode is compiled first, as a regular pip install does.

    python -m tools.bench_rewrite [--sizes 1 2 4] [--repeats 5] [--workdir DIR] [--evict data|all]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tests.support.synthetic_llama import FFN, HIDDEN, VOCAB, write_synthetic

LAYERS_FOR_GB = {1: 8, 2: 19, 4: 41}


def write_plans(folder: Path, layers: int) -> tuple[Path, Path]:
    from converter.plan import PrunePlan

    ident = PrunePlan(tuple(range(VOCAB)), tuple(tuple(range(FFN)) for _ in range(layers)))
    rng = np.random.default_rng(1)
    ffn = PrunePlan(tuple(range(VOCAB)),
                    tuple(tuple(sorted(rng.choice(FFN, 4096, replace=False).tolist())) for _ in range(layers)))
    return ident.save(folder / "identity.json"), ffn.save(folder / "ffn4096.json")


def evict(folder: Path) -> None:
    """Drop the page-cache pages of every file under `folder` (they must be clean: sync first)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def drop_caches(mode: str, data: Path) -> bool:
    """Make the next run read `data` from disk; with mode "all" also the program's own files.

    "data" evicts only the checkpoint's pages, as a user converting a checkpoint they just
    downloaded sees it: cold data, the installed tool in the cache like cp's binary. "all" drops
    the whole page cache, so Python, numpy and matplotlib are read from disk too. Returns
    whether the eviction could be done.
    """
    subprocess.run(["sync"], check=True)
    if mode == "data":
        evict(data)
        return True
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (the rewrite draws its report's plots in a child)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _kib(text: str, field: str) -> int:
    """The value in bytes of a `Field:   123 kB` line of a /proc status or smaps_rollup file (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def anon_pss(pid: int) -> int | None:
    """Anonymous memory of `pid` with pages it shares with its parent or child split between them.

    A forked child shares its parent's anonymous pages copy on write; summing RssAnon counts them
    twice, Pss_Anon (Linux 5.8+) once. None when the kernel has no smaps_rollup.
    """
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return _kib(rollup, "Pss_Anon") if "Pss_Anon:" in rollup else None


class MemorySampler(threading.Thread):
    """Peak anonymous / file-backed memory of a process and its children together, sampled every few ms.

    `anon` sums Pss_Anon over the tree (shared copy-on-write pages once; RssAnon where the kernel
    lacks it), `main_anon` is the RssAnon of the process itself, `file` sums RssFile.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.anon, self.file, self.main_anon, self.done = pid, 0, 0, 0, False

    def run(self) -> None:
        while not self.done:
            anon = file = 0
            for pid in _descendants(self.pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                rss_anon = _kib(status, "RssAnon")
                pss = anon_pss(pid)
                anon += rss_anon if pss is None else pss
                file += _kib(status, "RssFile")
                if pid == self.pid:
                    self.main_anon = max(self.main_anon, rss_anon)
            if not anon and not file and not Path(f"/proc/{self.pid}").exists():
                break
            self.anon, self.file = max(self.anon, anon), max(self.file, file)
            time.sleep(0.005)


def timed(cmd: list[str]) -> tuple[float, int, int, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = MemorySampler(proc.pid)
    sampler.start()
    _, err = proc.communicate()
    subprocess.run(["sync"], check=True)
    elapsed = time.perf_counter() - start
    sampler.done = True
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed: {err.decode()[-500:]}")
    return elapsed, sampler.anon, sampler.file, sampler.main_anon


def rewrite_cmd(src: Path, out: Path, plan: Path) -> list[str]:
    return [sys.executable, "-m", "converter.cli", str(src), str(out), "--plan", str(plan), "--no-progress"]


def cold_run(cmd: list[str], src: Path, out: Path, mode: str) -> tuple[bool, tuple[float, int, int, int]]:
    """(cache dropped?, timed(cmd)) with `src` (or everything) evicted first and `out` removed after."""
    cold = drop_caches(mode, src)
    result = timed(cmd)
    shutil.rmtree(out, ignore_errors=True)
    return cold, result


def fixed_cost(work: Path, repeats: int, mode: str) -> float:
    """Median cold wall time of the CLI on a 1-layer, 3 MB checkpoint: start-up, imports, report, fsync.

    A rewrite costs about this plus bytes / streaming speed; cp's start-up is a few milliseconds, so
    at 1 GB this alone moves the ratio by tens of percent.
    """
    from converter.plan import PrunePlan

    src = work / "synthetic-tiny"
    write_synthetic(src, 1, hidden=256, ffn=704, vocab=1024)
    plan = PrunePlan(tuple(range(1024)), (tuple(range(704)),)).save(work / "tiny-identity.json")
    times = [cold_run(rewrite_cmd(src, work / "out", plan), src, work / "out", mode)[1][0] for _ in range(repeats)]
    shutil.rmtree(src)
    return statistics.median(times)


def bench_size(work: Path, gb: int, repeats: int, mode: str) -> dict[str, object]:
    src = work / f"synthetic-{gb}gb"
    total = write_synthetic(src, LAYERS_FOR_GB[gb])
    ident, ffn = write_plans(work, LAYERS_FOR_GB[gb])
    runs: dict[str, list[tuple[float, int, int, int]]] = {"cp": [], "identity": [], "ffn": []}
    cold = True
    for _ in range(repeats):
        for label, cmd, out in (("cp", ["cp", "-r", str(src), str(work / "cp-out")], work / "cp-out"),
                                ("identity", rewrite_cmd(src, work / "out", ident), work / "out"),
                                ("ffn", rewrite_cmd(src, work / "out", ffn), work / "out")):
            dropped, result = cold_run(cmd, src, out, mode)
            cold = cold and dropped
            runs[label].append(result)
    largest = VOCAB * HIDDEN * 2
    shutil.rmtree(src)
    med = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    # The disk here drifts by tens of percent between minutes, so each ratio pairs a rewrite with the
    # cp run just before it (same round) and the median over rounds is reported, with its range.
    ratios = {k: [c[0] / r[0] for c, r in zip(runs["cp"], runs[k])] for k in ("identity", "ffn")}
    return {"gb": total / 1e9, "cold_cache": cold, "largest_tensor": largest,
            "cp_gbs": total / med["cp"] / 1e9,
            **{f"{k}_gbs": total / med[k] / 1e9 for k in ("identity", "ffn")},
            **{f"{k}_ratio": statistics.median(v) for k, v in ratios.items()},
            **{f"{k}_range": (min(v), max(v)) for k, v in ratios.items()},
            **{f"{k}_anon": max(r[1] for r in runs[k]) for k in ("identity", "ffn")},
            **{f"{k}_file": max(r[2] for r in runs[k]) for k in ("identity", "ffn")},
            **{f"{k}_main_anon": max(r[3] for r in runs[k]) for k in ("identity", "ffn")}}


def compile_tool() -> None:
    """Write the tool's bytecode, as `pip install` does for a regular install.

    An editable install never compiles, and with PYTHONDONTWRITEBYTECODE set (as on this machine)
    every run would compile converter/ and exporters/ from source again: about 60 ms of start-up
    that an installed compact-convert does not pay.
    """
    import compileall

    import converter
    import exporters

    for package in (converter, exporters):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4], choices=sorted(LAYERS_FOR_GB))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--evict", choices=("data", "all"), default="data",
                        help="before each run evict the checkpoint's pages only (default) or drop the whole page "
                             "cache, the installed tool included (needs root)")
    args = parser.parse_args()
    compile_tool()
    work = Path(tempfile.mkdtemp(prefix="bench-rewrite-", dir=args.workdir))
    try:
        fixed = fixed_cost(work, args.repeats, args.evict)
        rows = [bench_size(work, gb, args.repeats, args.evict) for gb in args.sizes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 2**20
    print(f"{'size':>6} {'cp+sync':>8} {'identity':>9} {'ratio (range)':>17} {'ffn-cut':>8} {'ratio (range)':>17} "
          f"{'anon id/ffn MiB':>16} {'file id/ffn MiB':>16} {'anon limit':>10}")
    for r in rows:
        limit = (2 * r["largest_tensor"] + 300e6) / mib  # type: ignore[operator]
        ratio = {k: f"{r[k + '_ratio']:.2f}x ({r[k + '_range'][0]:.2f}-{r[k + '_range'][1]:.2f})"  # type: ignore[index]
                 for k in ("identity", "ffn")}
        print(f"{r['gb']:5.2f}G {r['cp_gbs']:7.2f}/s {r['identity_gbs']:8.2f}/s {ratio['identity']:>17} "
              f"{r['ffn_gbs']:7.2f}/s {ratio['ffn']:>17} "
              f"{r['identity_anon'] / mib:7.0f}/{r['ffn_anon'] / mib:<8.0f} {r['identity_file'] / mib:7.0f}/"
              f"{r['ffn_file'] / mib:<8.0f} {limit:9.0f}")
    print("ratio: rewrite speed over cp+sync, paired within each round (cp runs just before), median over rounds")
    print(f"fixed cost of one rewrite (cold start-up, imports, report plots, fsync; a 3 MB checkpoint): {fixed:.2f} s")
    print("ratio less that fixed cost (an upper bound: the plots overlap the streaming), medians:")
    for r in rows:
        gb = r["gb"]
        cp_s, id_s, ffn_s = (gb / r[k] for k in ("cp_gbs", "identity_gbs", "ffn_gbs"))  # type: ignore[operator]
        less = {k: f"{cp_s / (t - fixed):.2f}x" if t > fixed else "n/a (run shorter than the fixed cost)"
                for k, t in (("identity", id_s), ("ffn-cut", ffn_s))}
        print(f"  {gb:.2f} GB: identity {less['identity']}, ffn-cut {less['ffn-cut']} of cp")
    if len(rows) > 1:
        for key, what in (("ffn_anon", "with the plot child (Pss_Anon summed)"),
                          ("ffn_main_anon", "the rewrite process alone (RssAnon)")):
            growth = rows[-1][key] / rows[0][key] - 1  # type: ignore[operator]
            print(f"peak anonymous memory of the FFN cut, {what}: "
                  + ", ".join(f"{r['gb']:.0f} GB {r[key] / mib:.0f} MiB" for r in rows)  # type: ignore[operator]
                  + f"; growth {rows[0]['gb']:.0f} GB -> {rows[-1]['gb']:.0f} GB: {100 * growth:+.1f}%")
    if not all(r["cold_cache"] for r in rows):
        print("cache: could not be dropped (runs are warm)")
    elif args.evict == "data":
        print("cache: the checkpoint's pages evicted before every run (posix_fadvise DONTNEED); the tool's own "
              "files stay cached, as cp's do")
    else:
        print("cache: the whole page cache dropped before every run (the tool's Python, numpy and matplotlib too)")


if __name__ == "__main__":
    main()
