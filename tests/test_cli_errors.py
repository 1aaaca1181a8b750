"""Every console script answers a bad dataset or setting with one line naming it, and exit status 2."""
import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)

CASES = [
    (["nnUNetv2_cps4_preprocess_unlabeled", "-d", "987"], "dataset '987' not found"),
    (["nnUNetv2_cps4_pretrain_vlm", "987", "2d", "0", "-device", "cpu"], "dataset '987' not found"),
    (["nnUNetv2_cps4_predict_vlm", "-i", "x", "-o", "y", "-d", "987", "-device", "cpu"], "dataset '987' not found"),
    (["nnUNetv2_cps4_cost", "-d", "987", "-tr", "nnUNetTrainer"], "dataset '987' not found"),
    (["nnUNetv2_cps4_benchmark", "--preset", "tiny", "--source", "987"], "987"),
    (["nnUNetv2_cps4_make_phantom", "-d", "988", "--size", "7x10"], "--size"),
]


@pytest.mark.parametrize("args,expected", CASES, ids=[c[0][0] for c in CASES])
def test_one_line_error(args, expected, tmp_path):
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(tmp_path / var, exist_ok=True)
        env[var] = str(tmp_path / var)
    result = subprocess.run([os.path.join(BIN, args[0])] + args[1:] + (["--out", str(tmp_path / "b")]
                            if args[0] == "nnUNetv2_cps4_benchmark" else []),
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


def test_benchmark_source_is_resolved_in_the_users_raw_folder_before_anything_is_written(tmp_path, monkeypatch):
    """`--source 501` means Dataset501_* of the user's nnUNet_raw (not of the benchmark's private folders); a source
    that cannot be used is refused before protocol.json is written, so the --out folder stays usable."""
    from toy_data import make_toy_dataset

    raw = tmp_path / "raw"
    make_toy_dataset(str(raw), n_test=0)  # Dataset501_Toy, without labelsTs
    os.rmdir(raw / "Dataset501_Toy" / "labelsTs")
    before = {p: open(p, "rb").read() for p in map(str, raw.rglob("*")) if os.path.isfile(p)}
    env = dict(os.environ, nnUNet_raw=str(raw))
    out = tmp_path / "bench"
    result = subprocess.run([os.path.join(BIN, "nnUNetv2_cps4_benchmark"), "--preset", "tiny", "--source", "501",
                             "--out", str(out)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert str(raw / "Dataset501_Toy") in line and "labelsTs" in line and "Fix" in line, line
    assert not (out / "protocol.json").exists()
    assert {p: open(p, "rb").read() for p in map(str, raw.rglob("*")) if os.path.isfile(p)} == before

    from nnunet_cps4.experiments.benchmark import resolve_source
    os.makedirs(raw / "Dataset501_Toy" / "labelsTs")
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert resolve_source("501") == str(raw / "Dataset501_Toy")
    assert resolve_source("Dataset501_Toy") == str(raw / "Dataset501_Toy")
