"""`make gpu-check`'s logic that needs no GPU: the peak table, MFU, the warm-up window, the results file, the
first time estimate on a GPU; and the whole script on a CPU with a tiny config (--cpu-smoke)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import gpu_check
from tests.conftest import ROOT
from voicetune import gpus, memory, recipes


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.05), ("NVIDIA L40", 181.05), ("NVIDIA A10G", 125.0),
    ("NVIDIA A10", 125.0), ("Tesla T4", 65.0), ("Tesla V100-SXM2-16GB", 125.0), ("Tesla V100-PCIE-32GB", 112.0),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_peak_table_lookup(name: str, peak: float | None) -> None:
    assert gpus.peak_tflops(name) == peak


def test_mfu_is_four_n_flops_per_token_over_the_peak() -> None:
    assert gpus.mfu(1000.0, 1e9, 100.0) == pytest.approx(1000 * 4 * 1e9 / 100e12)  # 0.04
    value, text = gpu_check.mfu_line(10_000.0, 1_610_612_736, "NVIDIA H100 80GB HBM3")
    assert value == pytest.approx(10_000 * 4 * 1_610_612_736 / 989.4e12)
    assert text == f"MFU {value:.1%} of 989.4 TFLOPS (4·N, N = 1.61 B non-embedding)"
    assert gpu_check.mfu_line(1.0, 1, "Some GPU") == (None, "no MFU: 'Some GPU' is not in voicetune.gpus.PEAK_TFLOPS")


def test_first_gpu_estimate_scales_with_model_size_and_gpu(tmp_path: Path) -> None:
    for name in ("llama3-8b", "smollm2-1.7b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text((ROOT / "benchmarks/configs" / f"{name}.json").read_text())
    big = memory.shape_of(str(tmp_path / "llama3-8b"))
    assert big is not None and big.non_embedding_params == 8_030_261_248 - 2 * 128256 * 4096
    h100 = recipes.first_estimate_tokens_per_s("cuda", str(tmp_path / "llama3-8b"), "NVIDIA H100 80GB HBM3")
    assert h100 == pytest.approx(989.4e12 * gpus.ASSUMED_MFU / (4 * big.non_embedding_params))
    t4 = recipes.first_estimate_tokens_per_s("cuda", str(tmp_path / "llama3-8b"), "Tesla T4")
    assert h100 / t4 == pytest.approx(989.4 / 65.0)
    small = recipes.first_estimate_tokens_per_s("cuda", str(tmp_path / "smollm2-1.7b"), "NVIDIA H100 80GB HBM3")
    assert small > h100
    assert recipes.first_estimate_tokens_per_s("cuda", str(tmp_path / "smollm2-1.7b"), "Unknown") == 4000.0
    assert recipes.first_estimate_tokens_per_s("cpu", str(tmp_path / "llama3-8b")) == 80.0


def test_warmup_steps_are_left_out_of_the_rate() -> None:
    points = [(0.0, 100.0), (10.0, 200.0), (11.0, 300.0), (12.0, 400.0)]  # the first step took 10 s
    assert gpu_check.windowed_rate(points, warmup=1) == (200 / 2, 200)
    assert gpu_check.windowed_rate(points, warmup=0) == (300 / 12, 300)
    with pytest.raises(ValueError, match="need more than 4 logged steps to time after 3 warm-up steps, got 4"):
        gpu_check.windowed_rate(points, warmup=3)


def test_first_divergence_of_two_greedy_replies() -> None:
    assert gpu_check.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert gpu_check.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert gpu_check.first_divergence([1, 2], [1, 2, 3]) == 2


def test_results_file_names_the_gpu_and_lists_every_check(tmp_path: Path) -> None:
    path = gpu_check.results_path("2026-11-26", "NVIDIA H100 80GB HBM3", tmp_path)
    assert path == tmp_path / "2026-11-26-nvidia-h100-80gb-hbm3.md"
    checks = [gpu_check.Check("one", True, "fine", {"x": 1}), gpu_check.Check("two", False, "broke")]
    gpu_check.write_results(path, "NVIDIA H100 80GB HBM3", {"torch": "2.13"}, checks)
    text = path.read_text()
    assert "- PASS one: fine\n- FAIL two: broke\n" in text
    assert '"x": 1' in text and text.startswith("# GPU check on NVIDIA H100 80GB HBM3\n")


@pytest.mark.slow  # about 40 s: seven checks, three of them in child processes (one is the CLI's own training)
def test_cpu_smoke_runs_every_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = gpu_check.main(["--cpu-smoke", "--out", str(tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split(":")[0] for line in lines] == [
        "PASS QLoRA training (CPU smoke, fp32)", "PASS QLoRA training, second adapter (CPU smoke)",
        "PASS chat", "PASS chat", "PASS merge into the full-precision base",
        f"PASS {gpu_check.USER_RUN}", "PASS training bench vs plain TRL QLoRA"], lines
    assert code == 0
    (result,) = tmp_path.glob("*-cpu-smoke.md")
    text = result.read_text()
    assert text.count("- PASS ") == 7
    assert '"phase_seconds": {' in text and '"replay_asked": ' in text  # the user's run, timed phase by phase
