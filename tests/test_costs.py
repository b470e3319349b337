"""Analytic costs, and reading OFA's released net.config files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ofa2_edge.core.errors import InvalidArchError
from ofa2_edge.space.arch import Arch, SearchSpace, genomes_of
from ofa2_edge.space.costs import arch_costs, macs_m, params_m, peak_mem_mb, plan_costs
from ofa2_edge.space.netplan import layer_plan
from ofa2_edge.space.ofa_config import load_net_config


def specialized(assets: Path) -> list[Path]:
    return sorted(p for p in (assets / "ofa_specialized").iterdir() if p.is_dir())


def test_released_nets_are_read_and_sorted_by_space(assets_dir: Path) -> None:
    widths, refused = [], []
    for folder in specialized(assets_dir):
        try:
            widths.append(load_net_config(folder).w)
        except InvalidArchError as exc:
            assert "ProxylessNAS" in str(exc)
            refused.append(folder.name)
    assert widths.count(1.0) == 24 and widths.count(1.2) == 10 and len(refused) == 16


def test_macs_match_published_flops_nets(assets_dir: Path) -> None:
    for folder in specialized(assets_dir):
        m = re.match(r"flops-(\d+)M", folder.name)
        if m:
            arch = load_net_config(folder)
            assert round(arch_costs([arch])[0]["macs_m"]) == int(m.group(1)), folder.name


def test_batched_costs_equal_per_layer_sums() -> None:
    archs = SearchSpace(resolutions=(128, 160, 224, 236)).sample(64, np.random.default_rng(0))
    g = genomes_of(archs)
    macs, params, peak = macs_m(g), params_m(g), peak_mem_mb(g)
    for i, arch in enumerate(archs):
        rows = plan_costs(arch)
        assert macs[i] == pytest.approx(sum(m for _, m, _ in rows) / 1e6, rel=1e-12)
        assert params[i] == pytest.approx(sum(p for _, _, p in rows) / 1e6, rel=1e-12)
    assert (peak > 0).all()


def test_costs_grow_with_the_network() -> None:
    small, large = Arch.smallest(160), Arch.largest(224)
    c_small, c_large = arch_costs([small, large])
    for key in ("macs_m", "params_m", "peak_mem_mb"):
        assert c_small[key] < c_large[key]
    assert len(layer_plan(small)) == 2 + 10 + 4 and len(layer_plan(large)) == 2 + 20 + 4


def test_width_multipliers_can_mix_in_one_call() -> None:
    a10, a12 = Arch.largest(224, w=1.0), Arch.largest(224, w=1.2)
    c10, c12 = arch_costs([a12, a10])[::-1]
    assert c10["macs_m"] < c12["macs_m"]


def test_an_empty_batch_costs_nothing() -> None:
    empty = np.zeros((0, 46), dtype=np.int64)
    for fn in (macs_m, params_m, peak_mem_mb):
        out = fn(empty)
        assert out.shape == (0,)
