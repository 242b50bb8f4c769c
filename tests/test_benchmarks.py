"""The benchmark scripts' smoke runs (slow tier): benchmarks/blocks.py --quick end to end, every row
loading its file as it says and measured."""

import re
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow


def test_blocks_benchmark_quick():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "blocks.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = dict(re.findall(r"^\| ([^|]+?) \| (\w+) \| \d+ \| [\d.]+ \(", out.stdout, re.M))
    assert rows == {
        "bf16 (.pth), kept 16-bit": "bfloat16", "int8 (--quantize int8, from the .pth)": "int8",
        "Q8_0 file, its blocks as int8": "int8",
        "Q5_1 file, blocks kept, head fp16": "Q5_1", "Q4_0 file, blocks kept, head fp16": "Q4_0",
        "Q5_1 file, blocks kept, head int8": "Q5_1", "Q5_0 file, blocks kept, head int8": "Q5_0",
        "Q4_1 file, blocks kept, head int8": "Q4_1", "Q4_0 file, blocks kept, head int8": "Q4_0"}, out.stdout
    # MiB read per token (rounded; the quick model's head is 88% of its weights): an int8 head reads
    # about half of an fp16 one, bf16 the most
    mib = {k: int(v) for k, v in re.findall(r"^\| ([^|]+?) \| \w+ \| (\d+) \|", out.stdout, re.M)}
    assert mib["Q4_0 file, blocks kept, head int8"] <= mib["Q5_1 file, blocks kept, head int8"] \
        <= mib["int8 (--quantize int8, from the .pth)"] < mib["Q4_0 file, blocks kept, head fp16"] \
        < mib["bf16 (.pth), kept 16-bit"]


def test_busy_benchmark_quick():
    """benchmarks/busy.py --quick: every row of both tables printed with its figures (a small model,
    one spinning program started and stopped by the script)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "busy.py"), "--quick"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^\| fp32 \| (\w+) \| ([\d.]+) tok/s \| ([\d.]+) tok/s \| (\d+) / (\d+) tok/s \|$",
                      out.stdout, re.M)
    assert [r[0] for r in rows] == ["auto", "1"], out.stdout
    assert all(float(x) > 0 for r in rows for x in r[1:]), out.stdout
    leaving = re.findall(r"^\| fp32 \| (\w+) \| ([\d.]+) tok/s \| ([\d.]+) tok/s \| ([\d.]+|nan) s \|$", out.stdout, re.M)
    assert [r[0] for r in leaving] == ["auto", "1"] and all(float(r[2]) > 0 for r in leaving), out.stdout


def test_auto_vs_fixed_threads_smoke(tmp_path):
    """benchmarks/auto_vs_fixed.py on a small checkpoint, one round: both settings measured, ratios printed."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench
    from rwkv_np.config import RWKVConfig
    from rwkv_np.rwkv4.params import random_weights

    path = tmp_path / "small.pth"
    bench.write_aligned_torch_zip(path, random_weights(RWKVConfig(n_layer=2, n_embd=512, vocab_size=8000,
                                                                  ffn_dim=2048), 0), "float32")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "auto_vs_fixed.py"), str(path), "--rounds", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("prompt 512 tok/s", "generation tok/s"):
        m = re.search(rf"^{name}: auto ([\d.]+), fixed ([\d.]+); auto / fixed by round ([\d.]+); median ([\d.]+)$",
                      out.stdout, re.M)
        assert m and all(float(x) > 0 for x in m.groups()), out.stdout
