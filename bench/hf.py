"""Benchmark: `mmd sync` of a HuggingFace repo against `huggingface_hub.snapshot_download`.

Builds one synthetic model repo of about 2 GiB in a temp dir (four ~500 MiB
``model-0000N-of-00004.safetensors`` shards of random bytes, written streamed, plus
``config.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json`` and
``README.md``) and serves it from ONE HF-Hub-compatible server process for the whole run:
``tests.servers.hfhub.HfHubServer`` started by this script in ``--serve`` mode, which is
``python -m tests.servers.hfhub`` plus a request counter read over the child's stdin/stdout
(the standalone server neither logs requests nor has a stats route). Then it compares,
alternating (the order flips every run) and ``--runs`` times each:

1. cold pass: a fresh ``python -m mmd sync`` process on a fresh ``MMD_HOME`` whose manifest
   pins the commit sha the server printed, against a fresh ``python -c "...snapshot_download(
   repo_id, revision=sha, local_dir=...)"`` process. Wall time around the whole process and
   GB/s (1 GB = 10^9 bytes). mmd verifies every sha256 (and git blob sha1) and fsyncs;
   snapshot_download hashes nothing and does not fsync (the ``flush`` column is the
   ``sync(2)`` right after each cold run, i.e. the dirty pages each side left behind).
2. no-op pass: ``mmd sync`` again on the same ``MMD_HOME`` against a second
   ``snapshot_download`` process on the same ``local_dir``: wall time of each whole process and
   the HTTP requests the server saw during it.

As a reference (not a target), each run also fetches the same 9 files with
``curl -s -L -Z`` (parallel, C, no hashing, no fsync): what loopback plus page-cache writes
allow on this machine; ``--no-curl`` skips it.

Both sides get the same environment: ``HF_ENDPOINT`` = the server, ``HF_HOME`` in the temp
dir, ``HF_HUB_DISABLE_TELEMETRY=1``, ``HF_HUB_DISABLE_XET=1``, no ``HF_TOKEN``, and one
bytecode cache (``PYTHONPYCACHEPREFIX`` in the temp dir, ``PYTHONDONTWRITEBYTECODE`` removed)
filled by an unreported warm-up round, so that neither side pays for compiling sources.
Outputs are deleted and the disk ``sync``-ed between runs; the served files stay in the page
cache. Prints per-run figures, medians, the ratios and PASS/FAIL against issue 3's targets:

* cold: median mmd GB/s / median snapshot_download GB/s >= ``--target-cold`` (2.0)
* no-op: median snapshot_download time / median mmd time >= ``--target-noop`` (2.0)
* no-op: mmd makes 0 HTTP requests (in every run)

Exits 0 whatever the verdicts; nonzero only on errors. Temp files and the server are removed
on exit, Ctrl-C and SIGTERM. About 1.5 minutes with the defaults.

    python bench/hf.py [--runs 3] [--shard-mib 500] [--no-curl] [--tmpdir DIR]

To measure a modified copy of mmd without installing it: ``PYTHONPATH=/tmp/copy python
bench/hf.py`` (children run in the temp dir, so PYTHONPATH comes before the checkout).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import ROOT, SCRUBBED_VARIABLES, main_guard, run, stop_process

REPO_ID = "bench-org/bench-model"
SHARDS = 4
GEN_CHUNK = 4 << 20


SNAPSHOT_CODE = (
    "import sys\n"
    "from huggingface_hub import snapshot_download\n"
    "snapshot_download(sys.argv[1], revision=sys.argv[2], local_dir=sys.argv[3])\n"
)


# ---------------------------------------------------------------------- server child mode


def serve(repo_dir: pathlib.Path, repo_id: str) -> int:
    """Serve repo_dir like `python -m tests.servers.hfhub`, plus a request counter.

    Prints ``READY <url>`` and ``COMMIT <sha>``; then each ``STATS`` line on stdin is answered
    with one JSON line (requests since the previous STATS, server CPU seconds so far). Exits
    on EOF (so it never outlives the benchmark), SIGTERM or Ctrl-C.
    """
    # (imported by name: type-checking this script need not type-check the test servers)
    hfhub = importlib.import_module("tests.servers.hfhub")

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = hfhub.HfHubServer()
    server.create_repo(repo_id)
    files: dict[str, bytes | pathlib.Path] = {
        p.name: p for p in sorted(repo_dir.iterdir()) if p.is_file()
    }
    sha = server.commit(repo_id, files, message="Upload from --repo-dir")
    server.start()
    try:
        sys.stdout.write(f"READY {server.url}\nCOMMIT {sha}\n")
        sys.stdout.flush()
        for line in sys.stdin:
            if line.strip() != "STATS":
                continue
            records = server.requests_matching("*")
            server.reset_stats()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats = {
                "requests": [[r.method, r.path, r.status] for r in records],
                "cpu": usage.ru_utime + usage.ru_stime,
            }
            sys.stdout.write(json.dumps(stats) + "\n")
            sys.stdout.flush()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop()
    return 0


class Server:
    """The ``--serve`` child: one process for the whole benchmark."""

    def __init__(self, repo_dir: pathlib.Path, repo_id: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(pathlib.Path(__file__).resolve()),
                "--serve",
                str(repo_dir),
                repo_id,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        try:
            ready = self._readline()
            commit = self._readline()
            if not ready.startswith("READY ") or not commit.startswith("COMMIT "):
                raise RuntimeError(f"hub server did not start (said {ready!r} {commit!r})")
        except BaseException:
            self.stop()
            raise
        self.url = ready.split(None, 1)[1]
        self.commit = commit.split(None, 1)[1]

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"hub server exited (code {self.proc.poll()})")
        return line.strip()

    def stats(self) -> dict:
        """Requests seen since the previous call, and the server's CPU seconds so far."""
        assert self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write("STATS\n")
            self.proc.stdin.flush()
            return json.loads(self._readline())

    def stop(self) -> None:
        stop_process(self.proc, close_stdin=True)  # EOF: the server stops itself


# ---------------------------------------------------------------------- repo generation


def write_random(path: pathlib.Path, size: int) -> None:
    """`size` random bytes, written in chunks (never held in memory)."""
    with path.open("wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(GEN_CHUNK, left))
            fh.write(chunk)
            left -= len(chunk)


def build_repo(repo_dir: pathlib.Path, shard_size: int) -> dict[str, int]:
    """Write the synthetic repo; return {file name: size}."""
    repo_dir.mkdir()
    for i in range(1, SHARDS + 1):
        write_random(repo_dir / f"model-{i:05d}-of-{SHARDS:05d}.safetensors", shard_size)
    vocab = {f"tok{i}": i for i in range(32_000)}  # a tokenizer.json of ~600 kB (LFS here)
    small = {
        "config.json": {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "vocab_size": 32000,
            "torch_dtype": "bfloat16",
        },
        "tokenizer.json": {"version": "1.0", "model": {"type": "BPE", "vocab": vocab}},
        "tokenizer_config.json": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "model_max_length": 4096,
        },
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True},
    }
    for name, content in small.items():
        (repo_dir / name).write_text(json.dumps(content, indent=2) + "\n")
    (repo_dir / "README.md").write_text(
        "---\nlicense: apache-2.0\npipeline_tag: text-generation\n---\n# bench model\n"
        "Synthetic weights (random bytes) for bench/hf.py.\n"
    )
    os.sync()
    return {p.name: p.stat().st_size for p in sorted(repo_dir.iterdir())}


def warm(repo_dir: pathlib.Path) -> None:
    """Read the served files once so that every run finds them in the page cache."""
    for path in repo_dir.iterdir():
        with path.open("rb") as fh:
            while fh.read(GEN_CHUNK):
                pass


# ---------------------------------------------------------------------- measuring


def child_env(tmp: pathlib.Path, url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        HF_ENDPOINT=url,
        HF_HOME=str(tmp / "hf_home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        NO_PROXY="127.0.0.1,localhost",
        # Bytecode for every child in one cache (filled by the warm-up round): without it,
        # PYTHONDONTWRITEBYTECODE=1 would make mmd (an editable checkout without
        # __pycache__) recompile its sources on every start, while huggingface_hub's
        # site-packages come with .pyc files.
        PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
    )
    env.update(extra or {})
    return env


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str], cwd: pathlib.Path, server: Server) -> dict:
    """Run cmd; return wall s, child CPU s, server CPU s and the requests the server saw."""
    before = server.stats()
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = children_cpu() - cpu0
    after = server.stats()
    if res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} exited with {res.returncode}:\n{res.stderr.strip()[-3000:]}"
        )
    if before["requests"]:
        raise RuntimeError(f"requests between runs: {before['requests'][:5]}")
    return {
        "wall": wall,
        "cpu": cpu,
        "srv": after["cpu"] - before["cpu"],
        "requests": after["requests"],
        "stdout": res.stdout,
    }


def clear(path: pathlib.Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def settle(seconds: float) -> float:
    """sync(2) and idle; return how long the sync took."""
    t0 = time.perf_counter()
    os.sync()
    took = time.perf_counter() - t0
    time.sleep(seconds)
    return took


def check_tree(root: pathlib.Path, sizes: dict[str, int], who: str) -> None:
    got = {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }
    if got != sizes:
        raise RuntimeError(
            f"{who} produced {sorted(got.items())}, expected {sorted(sizes.items())}"
        )


def run_mmd(ctx: dict) -> dict:
    tmp, server = ctx["tmp"], ctx["server"]
    home = tmp / "out" / "mmd_home"
    clear(home)
    (home / "models.yaml").write_text(
        f"version: 1\nmodels:\n  {REPO_ID}:\n    source: huggingface\n"
        f"    revision: {server.commit}\n"
    )
    env = child_env(tmp, server.url, {"MMD_HOME": str(home)})
    cmd = [sys.executable, "-m", "mmd", "sync"]
    settle(ctx["settle"])
    cold = timed(cmd, env, tmp / "out", server)
    cold["flush"] = settle(ctx["settle"])
    check_tree(home / "models" / "huggingface" / REPO_ID, ctx["sizes"], "mmd sync")
    noop = timed(cmd, env, tmp / "out", server)
    if "0 changed, 0 failed" not in noop["stdout"]:
        raise RuntimeError(f"second mmd sync was not a no-op: {noop['stdout'].strip()!r}")
    return {"cold": cold, "noop": noop}


def run_snapshot(ctx: dict) -> dict:
    tmp, server = ctx["tmp"], ctx["server"]
    local_dir = tmp / "out" / "snapshot"
    clear(local_dir)
    shutil.rmtree(tmp / "hf_home", ignore_errors=True)
    env = child_env(tmp, server.url)
    cmd = [sys.executable, "-c", SNAPSHOT_CODE, REPO_ID, server.commit, str(local_dir)]
    settle(ctx["settle"])
    cold = timed(cmd, env, tmp / "out", server)
    cold["flush"] = settle(ctx["settle"])
    check_tree(local_dir, ctx["sizes"], "snapshot_download")
    noop = timed(cmd, env, tmp / "out", server)
    return {"cold": cold, "noop": noop}


def run_curl(ctx: dict) -> dict:
    """Reference: every file with parallel curl (follows the CDN redirect; no hash, no fsync)."""
    tmp, server = ctx["tmp"], ctx["server"]
    out = tmp / "out" / "curl"
    clear(out)
    cmd = [ctx["curl"], "-s", "-f", "-L", "-Z", "--parallel-max", "8"]
    for name in ctx["sizes"]:
        cmd += ["-o", str(out / name), f"{server.url}/{REPO_ID}/resolve/{server.commit}/{name}"]
    settle(ctx["settle"])
    cold = timed(cmd, child_env(tmp, server.url), tmp / "out", server)
    cold["flush"] = settle(ctx["settle"])
    check_tree(out, ctx["sizes"], "curl")
    return {"cold": cold}


# ---------------------------------------------------------------------- benchmark


def bench(args: argparse.Namespace) -> int:
    curl = None if args.no_curl else shutil.which("curl")
    if not args.no_curl and curl is None:
        print("note: curl not found, no reference column", file=sys.stderr)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mmd-bench-hf-", dir=args.tmpdir))
    server: Server | None = None
    try:
        t0 = time.perf_counter()
        sizes = build_repo(tmp / "repo", args.shard_mib << 20)
        total = sum(sizes.values())
        print(
            f"generated {len(sizes)} files, {total} bytes in {time.perf_counter() - t0:.1f}s "
            f"under {tmp}",
            flush=True,
        )
        t0 = time.perf_counter()
        server = Server(tmp / "repo", REPO_ID)
        print(
            f"hub server {server.url} (pid {server.proc.pid}) serves {REPO_ID}@{server.commit} "
            f"(started and hashed in {time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        warm(tmp / "repo")
        (tmp / "out").mkdir()
        ctx = {"tmp": tmp, "server": server, "sizes": sizes, "settle": args.settle, "curl": curl}
        runners = {"mmd": run_mmd, "snapshot": run_snapshot}
        if curl is not None:
            runners["curl"] = run_curl
        # Warm-up round, not reported: fills the bytecode cache and the kernel's caches.
        t0 = time.perf_counter()
        for runner in runners.values():
            runner(ctx)
            clear(tmp / "out")
        print(f"warm-up round done in {time.perf_counter() - t0:.1f}s", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in runners}
        names = list(runners)
        for i in range(args.runs):
            # Alternate, and rotate the order every run so no side always goes first.
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                results[name].append(runners[name](ctx))
                clear(tmp / "out")
            m, s = results["mmd"][-1], results["snapshot"][-1]
            print(
                f"run {i + 1}/{args.runs} ({', '.join(order)}): cold mmd "
                f"{total / m['cold']['wall'] / 1e9:.2f} GB/s, snapshot_download "
                f"{total / s['cold']['wall'] / 1e9:.2f} GB/s; no-op mmd "
                f"{m['noop']['wall']:.3f}s/{len(m['noop']['requests'])} req, snapshot_download "
                f"{s['noop']['wall']:.3f}s/{len(s['noop']['requests'])} req",
                flush=True,
            )
        settle(0)
        report(results, total, len(sizes), args)
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report(
    results: dict[str, list[dict]], total: int, nfiles: int, args: argparse.Namespace
) -> None:
    mmd, snap, curl = results["mmd"], results["snapshot"], results.get("curl")
    med = statistics.median

    def gbps(row: dict, flush: bool = False) -> float:
        return total / (row["wall"] + (row["flush"] if flush else 0.0)) / 1e9

    print()
    print(
        f"{REPO_ID}: {nfiles} files, {total} bytes ({total / 2**30:.2f} GiB) over loopback from "
        "one hub server process;"
    )
    print(
        "wall time around each whole child process (python start-up and imports included), "
        "GB/s = 10^9 B/s;"
    )
    print(
        "cpu = the child's CPU s, srv = the server's CPU s, flush = the sync(2) right after "
        "the cold run."
    )
    print()
    head = (
        f"{'run':>3} | {'mmd cold':>8} {'GB/s':>5} {'cpu':>4} {'srv':>4} {'flush':>5} "
        f"| {'snap cold':>9} {'GB/s':>5} {'cpu':>4} {'srv':>4} {'flush':>5} "
        f"| {'mmd no-op':>9} {'req':>3} | {'snap no-op':>10} {'req':>3}"
        + (f" | {'curl -Z':>7} {'GB/s':>5}" if curl else "")
    )
    print(head)
    print("-" * len(head))
    for i in range(len(mmd)):
        mc, sc = mmd[i]["cold"], snap[i]["cold"]
        mn, sn = mmd[i]["noop"], snap[i]["noop"]
        line = (
            f"{i + 1:>3} | {mc['wall']:>7.2f}s {gbps(mc):>5.2f} {mc['cpu']:>4.1f} "
            f"{mc['srv']:>4.1f} {mc['flush']:>5.2f} "
            f"| {sc['wall']:>8.2f}s {gbps(sc):>5.2f} {sc['cpu']:>4.1f} {sc['srv']:>4.1f} "
            f"{sc['flush']:>5.2f} "
            f"| {mn['wall']:>8.3f}s {len(mn['requests']):>3} "
            f"| {sn['wall']:>9.3f}s {len(sn['requests']):>3}"
        )
        if curl:
            cc = curl[i]["cold"]
            line += f" | {cc['wall']:>6.2f}s {gbps(cc):>5.2f}"
        print(line)
    print("-" * len(head))
    mc_t, sc_t = med(r["cold"]["wall"] for r in mmd), med(r["cold"]["wall"] for r in snap)
    mc_g, sc_g = med(gbps(r["cold"]) for r in mmd), med(gbps(r["cold"]) for r in snap)
    mn_t, sn_t = med(r["noop"]["wall"] for r in mmd), med(r["noop"]["wall"] for r in snap)
    mn_r = max(len(r["noop"]["requests"]) for r in mmd)
    sn_r = med(len(r["noop"]["requests"]) for r in snap)
    line = (
        f"{'med':>3} | {mc_t:>7.2f}s {mc_g:>5.2f} {'':>4} {'':>4} {'':>5} "
        f"| {sc_t:>8.2f}s {sc_g:>5.2f} {'':>4} {'':>4} {'':>5} "
        f"| {mn_t:>8.3f}s {mn_r:>3} | {sn_t:>9.3f}s {sn_r:>3.0f}"
    )
    if curl:
        cc_t, cc_g = med(r["cold"]["wall"] for r in curl), med(gbps(r["cold"]) for r in curl)
        line += f" | {cc_t:>6.2f}s {cc_g:>5.2f}"
    print(line)
    print("(req in the med row: the most of any mmd no-op run; the median for snapshot_download)")
    for who, rows in (("snapshot_download", snap), ("mmd", mmd)):
        seen = sorted({(r[0], r[1]) for row in rows for r in row["noop"]["requests"]})
        if seen:
            print(f"{who} no-op requests: " + ", ".join(f"{m} {p}" for m, p in seen[:6]))

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    cold_ratio, noop_ratio = mc_g / sc_g, sn_t / mn_t
    print()
    print(
        f"cold:  mmd {mc_g:.2f} GB/s / snapshot_download {sc_g:.2f} GB/s = {cold_ratio:.2f} x "
        f"(target >= {args.target_cold:.1f}): {verdict(cold_ratio >= args.target_cold)}"
    )
    print(
        f"no-op: snapshot_download {sn_t:.3f}s / mmd {mn_t:.3f}s = {noop_ratio:.2f} x "
        f"(target >= {args.target_noop:.1f}): {verdict(noop_ratio >= args.target_noop)}"
    )
    print(f"no-op: mmd HTTP requests = {mn_r} (target 0): {verdict(mn_r == 0)}")
    flushed = med(gbps(r["cold"], flush=True) for r in snap)
    print()
    print(
        f"info: snapshot_download including the flush of its dirty pages: {flushed:.2f} GB/s "
        f"(mmd / that = {mc_g / flushed:.2f} x)"
    )
    if curl:
        print(
            f"info: curl -Z (no hashing, no fsync) {cc_g:.2f} GB/s = {cc_g / sc_g:.2f} x "
            f"snapshot_download; mmd reaches {mc_g / cc_g:.0%} of it"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--shard-mib", type=int, default=500, help="size of each of the 4 shards (default 500)"
    )
    parser.add_argument(
        "--target-cold", type=float, default=2.0, help="cold GB/s ratio to pass (2.0)"
    )
    parser.add_argument(
        "--target-noop", type=float, default=2.0, help="no-op time ratio to pass (2.0)"
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds to idle after each sync (default 1)"
    )
    parser.add_argument("--no-curl", action="store_true", help="skip the curl reference")
    parser.add_argument("--tmpdir", help="where to put the temp dir (default: system temp)")
    parser.add_argument(
        "--serve",
        nargs=2,
        metavar=("REPO_DIR", "REPO_ID"),
        help=argparse.SUPPRESS,  # internal: the hub server child
    )
    args = parser.parse_args(argv)
    if args.serve:
        return serve(pathlib.Path(args.serve[0]), args.serve[1])
    if args.runs < 1 or args.shard_mib < 1:
        parser.error("--runs and --shard-mib must be positive")

    return run(lambda: bench(args))


if __name__ == "__main__":
    main_guard(main)
