"""`vmm ls` start-up with and without vmm/_typer_fast.py (docs/benchmarks.md).

    python bench/startup_typer_patch.py PYTHON MODELS_ROOT [RUNS]

Runs each variant as a fresh interpreter RUNS times, interleaved so load on a shared box
hits both alike, and prints the median, minimum and 90th percentile wall time.
"""
import statistics, subprocess, sys, time
PY = sys.argv[1]
ROOT = sys.argv[2]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 30
variants = {
    "patched": "from vmm.cli import main; main(['ls', '--root', %r])" % ROOT,
    "unpatched": "import vmm._typer_fast as f; f.install = lambda: False\nfrom vmm.cli import main; main(['ls', '--root', %r])" % ROOT,
    "python -c pass": "pass",
}
times = {k: [] for k in variants}
for i in range(N):
    for name, code in variants.items():       # interleaved: load on the box hits both alike
        t = time.perf_counter()
        subprocess.run([PY, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times[name].append(time.perf_counter() - t)
for name, ts in times.items():
    ts.sort()
    print(f"{name:16s} median {statistics.median(ts)*1000:6.0f} ms  min {ts[0]*1000:6.0f} ms  p90 {ts[int(len(ts)*0.9)]*1000:6.0f} ms")
