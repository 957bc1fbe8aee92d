"""The fusion report as a user reads it: where each refusal is, and one refusal at many
places (a model's layers) as one entry."""

from __future__ import annotations

from irfuse.transforms.report import SHOWN_PLACES, FusionReport


def _refused(report: FusionReport, at: str, reason: str) -> None:
    report.rejected.append({"pass": "raise-rms-norm", "at": at, "reason": reason})


def test_one_refusal_at_several_places_is_one_entry_with_its_places():
    report = FusionReport()
    places = [f"%rsqrt_{i} in layers.{i}.q_norm (model.py:33)" for i in range(SHOWN_PLACES + 2)]
    for place in places:
        _refused(report, place, "no fp8 quant reads its value")
    _refused(report, "%rsqrt_9 in norm (model.py:33)", "another reason")
    lines = str(report).splitlines()
    header = f"  rejected raise-rms-norm at {len(places)} places: no fp8 quant reads its value"
    at = lines.index(header)
    assert lines[at + 1 : at + 1 + SHOWN_PLACES] == [
        f"             at {place}" for place in places[:SHOWN_PLACES]
    ]
    assert lines[at + 1 + SHOWN_PLACES] == "             and 2 more"
    assert "  rejected raise-rms-norm at %rsqrt_9 in norm (model.py:33): another reason" in lines
    assert len(report.to_json()["rejected"]) == len(places) + 1  # every place kept
