"""Lint tests of the device database: each catches one kind of error found in other tools'
tables."""
from __future__ import annotations

import json
import tomllib

import pytest

import costmodel as cm
from costmodel.hardware import DATA_FILE, NUMERIC_FIELDS, load_devices, value_from_quote

RAW = tomllib.loads(DATA_FILE.read_text())["device"]
SOURCES = tomllib.loads(DATA_FILE.read_text())["sources"]
DESIGN_DEVICES = ("v100-sxm2", "a100-sxm-40gb", "a100-sxm-80gb", "a100-pcie-80gb", "h100-sxm",
                  "h100-pcie", "h100-nvl", "h200", "b200", "l4", "l40s", "t4", "rtx-4090", "mi300x")


def test_every_design_device_is_there():
    assert set(DESIGN_DEVICES) <= set(cm.devices())


@pytest.mark.parametrize("key", sorted(RAW))
def test_every_figure_has_a_source_and_matches_its_quote(key):
    """Each numeric field re-derives from its quoted source: catches sparse peaks entered as dense,
    bidirectional link totals used per direction, Gb/s read as GB/s, TB/s slips (3.35 TB/s ->
    3072)."""
    e = RAW[key]
    for f in NUMERIC_FIELDS:
        if f not in e:
            continue
        quote = e.get("source", {}).get(f)
        assert quote, f"{key}.{f} has no source"
        src_id = quote.split(":")[0].split(" ")[0]
        assert src_id in SOURCES, f"{key}.{f}: unknown source id {src_id!r}"
        derived = value_from_quote(quote)
        # an entry may carry the quote's figure at the precision the datasheet prints it: half a
        # unit in the third significant digit is at most 0.5 %; the slips above are factors of
        # 2, 8 or 1000
        assert derived is not None and derived == pytest.approx(e[f], rel=0.005), \
            f"{key}.{f} = {e[f]} but its quote {quote!r} gives {derived}"


def test_check_file_is_clean_and_catches_a_sparse_entry(tmp_path):
    assert cm.hardware.check_file() == []
    bad = tmp_path / "bad.toml"
    bad.write_text(DATA_FILE.read_text().replace("bf16_tflops = 989.4\n", "bf16_tflops = 1978.9\n",
                                                 1))
    problems = cm.hardware.check_file(bad)
    assert len(problems) == 1 and "h100-sxm.bf16_tflops = 1978.9" in problems[0]


def test_quote_rule_catches_the_known_traps():
    # 1979 / 2 is exact in float64
    assert value_from_quote("nv-h100: BF16 Tensor Core 1,979 teraFLOPS with sparsity") == \
        pytest.approx(989.5)
    assert value_from_quote("x: NVLink 900 GB/s total") == 450
    assert value_from_quote("x: InfiniBand 200 Gb/s") == 25
    assert value_from_quote("x: 3.35 TB/s") == 3350
    assert value_from_quote("x: Gen4 x16 64 GB/s bidirectional total") == 32


@pytest.mark.parametrize("key", sorted(RAW))
def test_tensor_rates_are_consistently_dense(key):
    """Within one datasheet TF32 = FP16/2 and FP8 = INT8 = 2 x FP16 on
    Ampere/Hopper/Ada/Blackwell/CDNA3 -- one field copied from the sparse column breaks the
    ratio."""
    e = RAW[key]
    half = e.get("bf16_tflops", e.get("fp16_tflops"))
    if "bf16_tflops" in e:
        assert e["bf16_tflops"] == e["fp16_tflops"]
    # the ratios hold for the exact rates; the printed figures are rounded, B200's TF32 to two
    # digits (1.1 PF against 2.25 PF / 2: 2.2 %), and L40S prints FP8 733 against 2 x 362
    # (1.2 %).  A sparse figure is off by a factor of 2.
    if "tf32_tflops" in e and e.get("segment") != "geforce":
        assert e["tf32_tflops"] == pytest.approx(half / 2, rel=0.03)   # B200: 1.1 vs 2.25 PF
    if "fp8_tflops" in e and e.get("segment") != "geforce":
        assert e["fp8_tflops"] == pytest.approx(2 * half, rel=0.02)
    if "int8_tops" in e:
        assert e["int8_tops"] == pytest.approx((4 if e.get("segment") == "geforce" else 2) * half,
                                               rel=0.02)
    # sparse BF16/FP16 headlines of H100/MI300X, FP8 H100
    for trap in (1979, 1978.9, 2615, 2614.9, 3958):
        assert e.get("bf16_tflops") != trap and e.get("fp16_tflops") != trap, \
            f"{key}: sparse FP16/BF16 peak"


@pytest.mark.parametrize("key", sorted(k for k in RAW if RAW[k].get("segment") == "geforce"))
def test_geforce_half_precision_is_the_fp32_accumulate_rate(key):
    """GeForce Ada runs FP16 with FP32 accumulation at 2x its FP32 vector rate, not the 4x headline
    (FP16 accumulate), which frameworks never use for training or inference matmuls."""
    e = RAW[key]
    # 1 % for the rounding of the printed figures; the 4x headline is off by a factor of 2
    assert e["fp16_tflops"] <= 2 * e["fp32_tflops"] * 1.01
    assert e["bf16_tflops"] <= 2 * e["fp32_tflops"] * 1.01


@pytest.mark.parametrize("key", sorted(RAW))
def test_capacities_are_vendor_gb_not_converted(key):
    """Capacity as printed (integer GB of 1e9 B), bytes = GB x 1e9: a GiB conversion (74.5, 85.9)
    or a bits figure would show as a non-integer or an implausible size."""
    e = RAW[key]
    assert isinstance(e["memory_gb"], int), \
        f"{key}: memory_gb {e['memory_gb']!r} is not the printed integer"
    assert e["memory_gb"] in (16, 24, 32, 40, 48, 80, 94, 141, 180, 192, 256, 288)
    assert cm.get_device(key).memory == e["memory_gb"] * 10 ** 9


@pytest.mark.parametrize("key", sorted(RAW))
def test_units_are_plausible_bytes(key):
    """Bits-as-bytes and per-direction slips land outside these physical ranges."""
    d = cm.get_device(key)
    assert 100e9 <= d.bandwidth <= 10e12
    assert d.interconnect is None or 8e9 <= d.interconnect <= 1000e9
    assert all(1e12 <= p <= 10e15 for p in d.peaks.values())
    assert d.vector_peak <= min(d.peaks.get(dt, float("inf")) for dt in ("bf16", "fp16"))


def test_peak_refuses_unsupported_dtypes_by_name():
    with pytest.raises(ValueError, match="t4.*bf16"):
        cm.get_device("t4").peak("bf16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        cm.get_device("h100-sxm").peak("fp4")
    with pytest.raises(ValueError, match="unknown device 'h100'.*h100-sxm"):
        cm.get_device("h100")


def test_user_devices_file(tmp_path):
    spec = {"sources": {"me": "my lab"}, "device": {"my-gpu": {
        "name": "Lab GPU", "fp32_tflops": 10, "bf16_tflops": 100, "memory_gb": 16,
        "bandwidth_gbps": 500,
        "source": {"bf16_tflops": "me: 100"}}}}
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(spec))
    devs = load_devices(p)
    assert devs["my-gpu"].peak("bf16") == 100e12 and devs["my-gpu"].bandwidth == 500e9
    bad = tmp_path / "bad.toml"
    bad.write_text('[device.x]\nname = "x"\nfp32_tflops = -1\nmemory_gb = 1\nbandwidth_gbps = 1\n')
    with pytest.raises(ValueError, match="fp32_tflops must be a positive number"):
        load_devices(bad)


def test_cpu_device_is_measured_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("COSTMODEL_CACHE_DIR", str(tmp_path))
    d = cm.cpu_device()
    assert (tmp_path / "cpu.json").is_file()
    assert d.peak("fp32") > 1e8 and d.bandwidth > 1e8 and d.vector_peak > 1e7
    cached = json.loads((tmp_path / "cpu.json").read_text())
    # the compute roof is a bound: the theoretical peak, never below a measured GEMM rate
    assert d.peak("fp32") >= cached["fp32_flops"]
    cached["bandwidth_Bps"] = 12.3e9            # a second call reads the cache, not the clock
    (tmp_path / "cpu.json").write_text(json.dumps(cached))
    assert cm.cpu_device().bandwidth == 12.3e9
