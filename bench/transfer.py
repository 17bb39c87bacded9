"""Benchmark: mmd's HTTP transfer against curl on loopback.

Serves a file of random bytes (1 GiB by default, generated once into a temp dir, streamed)
from a local aiohttp server process (``python -m tests.servers.fileserver``), then downloads
it alternately with

* curl:  ``curl -s -o FILE URL``
* mmd:   a fresh ``python bench/transfer.py --mmd-once ...`` process that runs
  ``mmd.transfer.download(new_session(...), RemoteFile(...), PartFile(...),
  TransferOptions())`` and then ``part.finish(sha256, size)`` (so sha256 verification,
  fsync and the rename are included),

``--runs`` times each, deleting the outputs (and syncing the disk) between runs. Times are
wall-clock around the whole child process, so both sides pay process start-up. Prints
per-run and median MB/s (1 MB = 10^6 bytes), the ratio mmd/curl, and PASS/FAIL against
``--target`` (default 0.7). Exits 0 whatever the ratio; nonzero only on errors.

    python bench/transfer.py [--runs 5] [--size-mib 1024] [--target 0.7]

Note that curl does not fsync its output and mmd does; the mmd child reports how long its
download and its finish (hash check + fsync + rename) took, shown in the last columns.
To measure a modified copy of mmd without installing it, put its parent directory first:
``PYTHONPATH=/tmp/copy python bench/transfer.py`` (only the mmd child imports mmd).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, main_guard, run, stop_process

GEN_CHUNK = 4 << 20
FILE_NAME = "blob.bin"


# ---------------------------------------------------------------------- mmd child mode


def mmd_once(url: str, out: pathlib.Path, size: int, sha256: str) -> int:
    """Download once with mmd and print timings as JSON (run in a fresh process)."""
    t0 = time.perf_counter()
    import asyncio

    from mmd.partfile import PartFile
    from mmd.transfer import TransferOptions, download, new_session
    from mmd.types import RemoteFile

    t_import = time.perf_counter()

    async def run() -> tuple[float, float]:
        options = TransferOptions()
        part = PartFile(out, out.name)
        part.open()
        start = time.perf_counter()
        async with new_session(options) as session:
            await download(session, RemoteFile(out.name, size, sha256, url), part, options)
        downloaded = time.perf_counter()
        part.finish(sha256, size)
        return downloaded - start, time.perf_counter() - downloaded

    dl, finish = asyncio.run(run())
    json.dump(
        {"import": t_import - t0, "download": dl, "finish": finish},
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


# ---------------------------------------------------------------------- helpers


def generate(path: pathlib.Path, size: int) -> str:
    """Write `size` random bytes to `path` without holding them in memory; return sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(GEN_CHUNK, left))
            digest.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def start_server(directory: pathlib.Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.fileserver", "--port", "0", "--dir", str(directory)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the server prints READY as soon as it listens
    if not line.startswith("READY "):
        stop_process(proc)
        raise RuntimeError(f"file server did not start (said {line!r})")
    return proc, line.split(None, 1)[1]


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a running process (Linux /proc), or NaN."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def settle(out_dir: pathlib.Path, seconds: float) -> None:
    """Delete outputs, flush dirty pages and let the disk calm down before the next run."""
    for entry in out_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    os.sync()
    time.sleep(seconds)


def timed(cmd: list[str], server_pid: int) -> tuple[float, float, float, str]:
    """Run cmd; return (wall s, child CPU s, server CPU s, stdout)."""
    cpu0, srv0 = children_cpu(), proc_cpu(server_pid)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu, srv = children_cpu() - cpu0, proc_cpu(server_pid) - srv0
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {res.returncode}:\n{res.stderr.strip()[-2000:]}")
    return wall, cpu, srv, res.stdout


# ---------------------------------------------------------------------- benchmark


def bench(args: argparse.Namespace) -> int:
    curl = shutil.which("curl")
    if curl is None:
        print("error: curl not found", file=sys.stderr)
        return 2
    size = args.size_mib << 20
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mmd-bench-", dir=args.tmpdir))
    server: subprocess.Popen[str] | None = None
    try:
        data_dir, out_dir = tmp / "srv", tmp / "out"
        data_dir.mkdir()
        out_dir.mkdir()
        t0 = time.perf_counter()
        sha256 = generate(data_dir / FILE_NAME, size)
        print(
            f"generated {size} random bytes in {time.perf_counter() - t0:.1f}s "
            f"(sha256 {sha256[:16]}...) under {tmp}",
            flush=True,
        )
        server, base = start_server(data_dir)
        url = f"{base}/{FILE_NAME}"
        # Warm-up: pull the file into the page cache on the server side once.
        timed([curl, "-s", "-o", os.devnull, url], server.pid)

        cmds = {
            "curl": [curl, "-s", "-o", str(out_dir / "curl.bin"), url],
            "mmd": [
                sys.executable,
                str(pathlib.Path(__file__).resolve()),
                "--mmd-once",
                url,
                str(out_dir / "mmd.bin"),
                str(size),
                sha256,
            ],
        }
        results: dict[str, list[dict[str, float]]] = {"curl": [], "mmd": []}
        for i in range(args.runs):
            # Alternate, and flip the order every run so neither side always goes first.
            order = ("curl", "mmd") if i % 2 == 0 else ("mmd", "curl")
            for name in order:
                settle(out_dir, args.settle)
                wall, cpu, srv, stdout = timed(cmds[name], server.pid)
                out = out_dir / f"{name}.bin"
                got = out.stat().st_size if out.exists() else -1
                if got != size:
                    raise RuntimeError(f"{name} wrote {got} bytes, expected {size}")
                row = {"wall": wall, "cpu": cpu, "srv": srv}
                if name == "mmd":
                    row.update(json.loads(stdout.strip().splitlines()[-1]))
                results[name].append(row)
            c, m = results["curl"][-1], results["mmd"][-1]
            print(
                f"run {i + 1}/{args.runs}: curl {size / c['wall'] / 1e6:7.0f} MB/s   "
                f"mmd {size / m['wall'] / 1e6:7.0f} MB/s",
                flush=True,
            )
        settle(out_dir, 0)
        report(results, size, args.target)
        return 0
    finally:
        if server is not None:
            stop_process(server)
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[str, list[dict[str, float]]], size: int, target: float) -> None:
    curl, mmd = results["curl"], results["mmd"]
    print()
    print(f"{size} bytes ({size / 2**20:.0f} MiB) over loopback; MB/s = 10^6 bytes/s of wall")
    print("time around the whole child process (mmd: fresh python process, includes")
    print("imports, sha256 check, fsync and rename; curl: no fsync).")
    print()
    head = (
        f"{'run':>4} | {'curl MB/s':>9} {'cpu s':>6} | {'mmd MB/s':>9} {'cpu s':>6} "
        f"| {'mmd: import':>11} {'download':>8} {'finish':>6} | {'srv cpu c/m':>11}"
    )
    print(head)
    print("-" * len(head))
    for i, (c, m) in enumerate(zip(curl, mmd, strict=True), 1):
        print(
            f"{i:>4} | {size / c['wall'] / 1e6:>9.0f} {c['cpu']:>6.2f} "
            f"| {size / m['wall'] / 1e6:>9.0f} {m['cpu']:>6.2f} "
            f"| {m['import']:>10.2f}s {m['download']:>7.2f}s {m['finish']:>5.2f}s "
            f"| {c['srv']:>5.2f}/{m['srv']:<5.2f}"
        )
    med_c = statistics.median(size / r["wall"] / 1e6 for r in curl)
    med_m = statistics.median(size / r["wall"] / 1e6 for r in mmd)
    print("-" * len(head))
    print(f"{'med':>4} | {med_c:>9.0f} {'':>6} | {med_m:>9.0f}")
    ratio = med_m / med_c
    verdict = "PASS" if ratio >= target else "FAIL"
    med_dl = statistics.median(size / r["download"] / 1e6 for r in mmd)
    fixed = statistics.median(r["wall"] - r["download"] for r in mmd)
    print()
    print(f"median curl {med_c:.0f} MB/s, median mmd {med_m:.0f} MB/s")
    print(
        f"(mmd's download() alone: median {med_dl:.0f} MB/s = {med_dl / med_c:.2f} x curl; "
        f"start-up + imports + finish add a median {fixed:.2f}s per run)"
    )
    print(f"ratio mmd/curl = {ratio:.2f}  (target >= {target:.2f}): {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each tool (default 5)")
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--target", type=float, default=0.7, help="ratio to pass (0.7)")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds to idle after sync between runs"
    )
    parser.add_argument("--tmpdir", help="where to put the temp dir (default: system temp)")
    parser.add_argument(
        "--mmd-once",
        nargs=4,
        metavar=("URL", "OUT", "SIZE", "SHA256"),
        help=argparse.SUPPRESS,  # internal: one mmd download in this (fresh) process
    )
    args = parser.parse_args(argv)
    if args.mmd_once:
        url, out, size, sha = args.mmd_once
        return mmd_once(url, pathlib.Path(out), int(size), sha)
    if args.runs < 1 or args.size_mib < 1:
        parser.error("--runs and --size-mib must be positive")

    return run(lambda: bench(args))


if __name__ == "__main__":
    main_guard(main)
