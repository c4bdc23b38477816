"""View planning: selection and reorder by name, wavelength equivalences, not-applicable with a reason."""

import pytest
import torch

from fusion.views import plan_view
from fusion_toys import TOLERANCE_NM


def test_selects_and_reorders_by_name():
    plan = plan_view("s2", ["B02", "B03", "B04"], ["B04", "B08", "B02", "B03"], tolerance_nm=TOLERANCE_NM)
    assert plan.applicable and plan.substitutions == ()
    x = torch.arange(4.0).view(1, 4, 1, 1)  # channel i holds value i
    assert plan.select(x).flatten().tolist() == [2.0, 3.0, 0.0]


def test_wavelength_equivalence_stands_in():
    plan = plan_view("aerial", ["RED", "GREEN", "BLUE", "NIR"], ["OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5"],
                     tolerance_nm=50)
    assert plan.applicable
    assert dict(plan.substitutions) == {"RED": "OLI_B4", "GREEN": "OLI_B3", "BLUE": "OLI_B2", "NIR": "OLI_B5"}
    x = torch.tensor([2.0, 3.0, 4.0, 5.0]).view(1, 4, 1, 1)
    assert plan.select(x).flatten().tolist() == [4.0, 3.0, 2.0, 5.0]
    assert plan.stand_ins().startswith("RED <- OLI_B4 (640 vs 654.5 nm), GREEN <- OLI_B3 (550 vs 561.5 nm)")
    assert plan_view("s1", ["VV"], ["VV"], tolerance_nm=TOLERANCE_NM).stand_ins() == ""


def test_not_applicable_names_missing_bands():
    plan = plan_view("aerial", ["RED", "GREEN", "BLUE", "NIR"], ["OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5"],
                     tolerance_nm=30)  # NIR 820 nm vs OLI_B5 865 nm: 45 nm apart
    assert not plan.applicable
    assert "NIR" in plan.reason and "30 nm" in plan.reason and plan.missing == ("NIR",)
    assert "not applicable" in plan.describe()
    with pytest.raises(ValueError, match="aerial"):
        plan.select(torch.zeros(1, 4, 2, 2))


def test_sar_needs_matching_polarisation():
    assert not plan_view("s1", ["VV", "VH"], ["B04", "B08"], tolerance_nm=TOLERANCE_NM).applicable
    assert plan_view("s1", ["VH", "VV"], ["VV", "VH"], tolerance_nm=TOLERANCE_NM).source_bands == ("VH", "VV")


def test_input_band_never_stands_in_twice():
    # B08 (833 nm) and B8A (865 nm) would both take OLI_B5 (865 nm): repeating a band is refused
    plan = plan_view("s2nir", ["B08", "B8A"], ["OLI_B5"], tolerance_nm=50)
    assert not plan.applicable and "B8A" in plan.reason
