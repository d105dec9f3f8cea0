"""`metahmr eval`'s errors by pose family: which kinds of pose a split's error comes from.

The synthetic engine writes each person's pose family (`standing`, `acrobatic`, ...) into its
annotation file (`family`); a feature cache finds it through the sources in its manifest.
The report gives, per split and method, the mean MPJPE and PA-MPJPE of each family at the
table's step count, with the ground-truth-plus-noise keypoints (the protocol's main table).
Splits without families (real data sets in the SPIN/CLIFF layout) are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import annotation_files
from training.features import MANIFEST, is_feature_cache
from training.metrics import SampleErrors

SOURCE = "noisy_gt"
FAMILY_METRICS = ("mpjpe", "pa_mpjpe")


def split_families(folder: str | Path) -> np.ndarray | None:
    """(N,) each sample's pose family, by dataset index; None when the split has none."""
    folder = Path(folder)
    if is_feature_cache(folder):
        sources = json.loads((folder / MANIFEST).read_text())["sources"]
    else:
        sources = [str(folder)]
    parts = []
    for path in (f for source in sources for f in annotation_files(source)):
        with np.load(path, allow_pickle=False) as data:
            if "family" not in data.files:
                return None
            parts.append(np.asarray(data["family"]).astype(str))
    return np.concatenate(parts) if parts else None


def entry_label(method: str, scope: str, several: bool) -> str:
    """A results row's name: the method, with its TTO scope when several scopes are compared
    (`several`); the name the results tables and the family tables both use."""
    return f"{method} ({scope})" if several and scope != "none" else method


def family_report(
    errors: dict[tuple[str, str, str, str, int], list[SampleErrors]],
    families: dict[str, list[np.ndarray]],
    shown: int,
) -> dict[str, Any]:
    """{split: {"steps", "counts": {family: n}, metric: {method: {family: mean}}}} for the
    splits with families; errors as `evaluate` collects them (per batch, in the order the
    families were appended). shown: the TTO step count the tables show (`table_step`)."""
    out: dict[str, Any] = {}
    several = len({key[3] for key in errors if key[3] != "none"}) > 1
    for split, parts in families.items():
        fam = np.concatenate(parts)
        names = sorted(set(fam.tolist()))
        masks = {f: fam == f for f in names}
        entry: dict[str, Any] = {"steps": shown, "counts": {f: int(m.sum()) for f, m in masks.items()}}
        entry.update({metric: {} for metric in FAMILY_METRICS})
        for (s, source, method, scope, k), errs in errors.items():
            if s != split or source != SOURCE or k != (0 if scope == "none" else shown):
                continue
            cat = SampleErrors.cat(errs)
            for metric in FAMILY_METRICS:
                values = getattr(cat, metric).numpy()
                entry[metric][entry_label(method, scope, several)] = {f: round(float(values[m].mean()), 1) for f, m in masks.items()}
        out[split] = entry
    return out


def markdown_section(report: dict[str, Any]) -> str:
    """One table per split: family, people, PA-MPJPE of each method (MPJPE in brackets)."""
    lines = [
        "Mean PA-MPJPE (MPJPE) in mm by the synthetic engine's pose family, keypoints "
        f"`{SOURCE}`; per split at the table's step count.",
    ]
    for split, entry in report.items():
        methods = list(entry["pa_mpjpe"])
        lines += ["", f"**{split}** ({entry['steps']} Adam steps)", ""]
        header = ["family", "people", *methods]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for fam, n in sorted(entry["counts"].items(), key=lambda kv: -kv[1]):
            cells = [fam, str(n)] + [
                f"{entry['pa_mpjpe'][m][fam]:.1f} ({entry['mpjpe'][m][fam]:.1f})"
                for m in methods
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
