"""Latency profiles cached per device in the user cache folder, and the fitted latency predictor."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from transformers import BertConfig

from bort.architecture import Architecture
from bort.latency import LatencyProfile
from search.latency import (LatencyCache, fit_predictor, latency_features, measure_architectures, predict,
                            sample_for_fit)

TEACHER = BertConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128,
                     vocab_size=500, max_position_embeddings=64)
ARCHS = [Architecture(d, 2, 32, i) for d in (1, 2) for i in (32, 64)]
PROFILE = LatencyProfile(batch_size=1, seq_len=16, threads=1, warmup=0, repeats=2)


def test_a_second_search_on_the_same_profile_reuses_the_measurements(tmp_path):
    cache = LatencyCache.open(PROFILE, TEACHER, cache_dir=tmp_path)
    first = measure_architectures(ARCHS, TEACHER, PROFILE, cache, progress=False)
    assert set(first) == {a.name for a in ARCHS} and all(v > 0 for v in first.values())
    assert cache.path.parent == tmp_path / "latency" and cache.path.name.startswith("cpu-float32-t1-b1-s16-")
    stamp = cache.path.stat().st_mtime_ns
    again = LatencyCache.open(PROFILE, TEACHER, cache_dir=tmp_path)  # a later search, another process
    assert measure_architectures(ARCHS[:3], TEACHER, PROFILE, again, progress=False) == \
        {a.name: first[a.name] for a in ARCHS[:3]}
    assert cache.path.stat().st_mtime_ns == stamp  # nothing measured, nothing written
    stored = json.loads(cache.path.read_text())
    assert stored["key"]["profile"]["seq_len"] == 16 and stored["key"]["device_model"]


def test_a_worker_waits_for_the_one_measuring_and_reuses_its_measurements(tmp_path):
    """Two workers of one machine: while one holds the cache's lock (measuring), the other waits, then reads what
    the first stored instead of measuring again."""
    cache = LatencyCache.open(PROFILE, TEACHER, cache_dir=tmp_path)
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.search.test_latency import ARCHS, PROFILE, TEACHER
        from search.latency import LatencyCache, measure_architectures
        cache = LatencyCache.open(PROFILE, TEACHER, cache_dir={str(tmp_path)!r})
        print("opened", flush=True)  # its cache is still empty
        print(json.dumps(measure_architectures(ARCHS, TEACHER, PROFILE, cache, progress=False)))
    """)
    with cache.lock():  # this test plays the first worker, in the middle of measuring
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert other.stdout.readline() == "opened\n"
        cache.ms = {a.name: 100.0 + k for k, a in enumerate(ARCHS)}  # values no real measurement gives
        cache.save()
    out, _ = other.communicate(timeout=120)
    assert other.returncode == 0
    assert json.loads(out) == cache.ms


def test_another_profile_or_name_gets_its_own_cache(tmp_path):
    base = LatencyCache.open(PROFILE, TEACHER, cache_dir=tmp_path)
    other = LatencyCache.open(LatencyProfile(batch_size=2, seq_len=16, threads=1), TEACHER, cache_dir=tmp_path)
    named = LatencyCache.open(PROFILE, TEACHER, cache_dir=tmp_path, name="laptop")
    assert len({base.path, other.path, named.path}) == 3 and named.path.name.startswith("laptop-")
    measure_architectures(ARCHS[:1], TEACHER, PROFILE, base, progress=False)
    assert other.ms == {} and LatencyCache.open(PROFILE, TEACHER, cache_dir=tmp_path).ms.keys() == {ARCHS[0].name}


def test_predictor_recovers_a_latency_linear_in_its_features():
    # ground truth written independently of the code: 2 µs per 10⁶ dense multiply-adds plus 0.3 ms per layer
    archs = [Architecture(d, a, h, i) for d in (1, 2, 4, 6) for a in (2, 4) for h in (64, 128) for i in (64, 256)]
    truth = [2e-6 * (a.num_hidden_layers * 32 * (4 * a.hidden_size ** 2 + 2 * a.hidden_size * a.intermediate_size))
             + 0.3 * a.num_hidden_layers for a in archs]
    model, report = fit_predictor(archs, truth, seq_len=32)
    assert report["points"] == len(archs) and report["cv_mape"] < 0.05 and report["cv_r2"] > 0.98
    unseen = Architecture(3, 4, 96, 128)
    expected = 2e-6 * 3 * 32 * (4 * 96 ** 2 + 2 * 96 * 128) + 0.9
    assert predict(model, [unseen], 32)[unseen.name] == pytest.approx(expected, rel=0.1)


def test_predictor_on_measured_points_reports_its_error(tmp_path):
    archs = [Architecture(d, 2, h, i) for d in (1, 2) for h in (32, 64) for i in (32, 128)]
    cache = LatencyCache.open(PROFILE, TEACHER, cache_dir=tmp_path)
    ms = measure_architectures(archs, TEACHER, PROFILE, cache, progress=False)
    _, report = fit_predictor(archs, [ms[a.name] for a in archs], seq_len=16)
    assert report["points"] == 8 and np.isfinite(report["cv_mape"]) and report["cv_mape"] >= 0
    assert set(report["measured"]) == {a.name for a in archs}


def test_sample_spreads_over_flops_and_fit_needs_six_points():
    archs = [Architecture(d, 2, 32, 32) for d in range(1, 11)]
    flops = [float(sum(latency_features(a, 16))) for a in archs]
    picked = sample_for_fit(archs, flops, 4)
    assert picked[0] == archs[0] and picked[-1] == archs[-1] and len(picked) == 4
    with pytest.raises(ValueError, match="at least 6"):
        fit_predictor(archs[:5], [1.0] * 5, seq_len=16)
