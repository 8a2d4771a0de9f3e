"""The CPU speed bars are ratios of one run's rows; missing targets are left out, failures ignored."""

import pytest

from vggt_deploy.bench.speed_bars import bars_sentence, speed_bars


def _row(name, p50, map_, size, status="ok"):
    return {"name": name, "status": status, "latency_ms": {"p50": p50}, "map": map_, "size_mb": size}


BENCH = {"settings": {"batch": 1}, "targets": [
    _row("ort-fp32", 10.0, 0.800, 40.0), _row("ov-fp32", 8.0, 0.800, 40.0), _row("ov-bf16", 5.0, 0.801, 40.0),
    _row("ov-mixed", 4.0, 0.798, 10.0), _row("nncf-ov", 4.4, 0.795, 11.0), _row("ort-quantize-static", 3.0, 0.1, 10.0,
                                                                              status="failed")]}


def test_ratios_come_from_the_rows():
    bars = speed_bars(BENCH)
    assert bars["vs_ort_fp32"] == pytest.approx(2.5)
    assert bars["fastest_float"] == "ov-bf16" and bars["vs_fastest_float"] == pytest.approx(1.25)
    assert bars["fastest_peer"] == "nncf-ov" and bars["vs_fastest_peer"] == pytest.approx(1.1)
    assert bars["map_drop"] == pytest.approx(0.002) and bars["map_vs_peer"] == pytest.approx(0.003)
    assert bars["smaller_than_fp32"] == pytest.approx(4.0)
    text = bars_sentence(BENCH)
    assert "2.50x faster than ort-fp32" in text and "1.25x faster than the fastest float target (ov-bf16)" in text
    assert "0.20 mAP points" in text and "4.00x smaller" in text


def test_missing_subject_or_peers():
    without_peers = {**BENCH, "targets": [r for r in BENCH["targets"] if r["name"] != "nncf-ov"]}
    assert "fastest_peer" not in speed_bars(without_peers)
    with pytest.raises(KeyError):
        speed_bars({**BENCH, "targets": [r for r in BENCH["targets"] if r["name"] != "ov-mixed"]})


def test_an_openvino_ir_weighs_its_xml_and_bin(tmp_path):
    from vggt_deploy.bench.harness import model_bytes

    (tmp_path / "m.xml").write_bytes(b"x" * 10)
    (tmp_path / "m.bin").write_bytes(b"x" * 1000)
    (tmp_path / "m.onnx").write_bytes(b"x" * 7)
    assert model_bytes(tmp_path / "m.xml") == 1010 and model_bytes(tmp_path / "m.onnx") == 7


def test_profile_sentence_splits_int8_and_float_time():
    from vggt_deploy.bench.speed_bars import profile_sentence

    rows = [{"target": "ov-mixed", "node_type": "FullyConnected", "kernel": "brgemm_avx512_I8", "us": 600.0,
             "total_us": 2000.0},
            {"target": "ov-mixed", "node_type": "FullyConnectedQuantizedLegacy", "kernel": "brgemm_avx512_i8",
             "us": 400.0, "total_us": 2000.0},
            {"target": "ov-mixed", "node_type": "Subgraph", "kernel": "jit_avx512_bf16", "us": 1000.0, "total_us": 2000.0},
            {"target": "ov-bf16 (FP32 graph)", "node_type": "FullyConnected", "kernel": "brgemm_avx512_bf16",
             "us": 1700.0, "total_us": 2700.0}]
    text = profile_sentence({"rows": rows})
    assert "spends 2000 µs" in text and "50% in int8 kernels" in text and "1.70x" in text and "1000 µs in float" in text


def _gap_row(verdict, low, high):
    return {"a_target": "ov-mixed", "b_target": "nncf-ov", "images": 4000, "shards": 40, "whole_diff_points": -0.03,
            "shard_diff_points": -0.05, "ci_low_points": low, "ci_high_points": high, "verdict": verdict}


def test_the_peer_gap_sentence_reads_the_paired_comparison():
    from vggt_deploy.bench.speed_bars import peer_gap_sentence

    other = {**_gap_row("a < b", -0.2, -0.1), "a_target": "ov-bf16", "b_target": "fp32"}
    text = peer_gap_sentence({"rows": [other, _gap_row("no difference", -0.13, 0.04)]})
    assert "on 4000 images (40 paired shards" in text and "is -0.030 points" in text
    assert "[-0.130, +0.040]" in text and "no measurable difference" in text
    assert "nncf-ov is measurably better" in peer_gap_sentence({"rows": [_gap_row("a < b", -0.2, -0.1)]})
    assert "ov-mixed is measurably better" in peer_gap_sentence({"rows": [_gap_row("a > b", 0.1, 0.2)]})
    assert peer_gap_sentence({"rows": [other]}) is None
