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
