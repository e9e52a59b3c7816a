"""Published figures of the field's protocols (``evaluate.protocol``), shown beside this run's
rows in the protocol's own units, always marked as published: never measured here.

Units as the papers print them: AP, CAP and AR in percent; KID x 10 in HumanSD's table and x 1000
in HyperHuman's. The papers' detector is HigherHRNet (mmpose); poseguide's rows use its own pose
estimator, so the two halves of the table are not the same measurement (the report says so).
"""

from __future__ import annotations

from typing import Any

# Each column: (the metrics.json path, its title (the arrow says which way is better), the unit
# scale applied to this run's value, decimals).

PUBLISHED: dict[str, dict[str, Any]] = {
    "humansd": {
        "source": "HumanSD (Ju et al., ICCV 2023), Table 1, Human-Art validation set",
        "columns": [
            (("coco", "AP"), "AP (%) ↑", 100.0, 2),
            (("cap", "AP"), "CAP (%) ↑", 100.0, 2),
            (("pce",), "PCE ↓", 1.0, 2),
            (("fid",), "FID ↓", 1.0, 2),
            (("kid",), "KID ×10 ↓", 10.0, 2),
            (("clip",), "CLIP ↑", 1.0, 2),
        ],
        "rows": [
            ("ControlNet (openpose)", 18.45, 57.18, 2.47, 27.24, 2.60, 33.16),
            ("T2I-Adapter", 18.20, 55.98, 2.73, 29.07, 2.67, 33.29),
            ("HumanSD", 31.85, 59.11, 1.61, 26.28, 2.56, 32.98),
        ],
        "notes": "FID at Inception feature 64; HumanSD issue #32: its quality script scored the "
        "saved 4-panel image, and FID is about 10 rather than 26 once fixed.",
    },
    "hyperhuman": {
        "source": "HyperHuman (Liu et al., ICLR 2024), Table 1, COCO val2014 human subset",
        "columns": [
            (("coco", "AP"), "AP (%) ↑", 100.0, 2),
            (("coco", "AR"), "AR (%) ↑", 100.0, 2),
            (("fid",), "FID ↓", 1.0, 2),
            (("kid",), "KID ×1k ↓", 1000.0, 2),
            (("clip",), "CLIP ↑", 1.0, 2),
        ],
        "rows": [
            ("ControlNet", 20.46, 30.23, 27.16, 10.29, 31.60),
            ("T2I-Adapter", 27.54, 36.62, 23.54, 7.98, 32.16),
            ("HumanSD", 26.71, 36.85, 52.49, 33.96, 29.48),
            ("HyperHuman", 30.38, 37.84, 17.18, 4.11, 32.17),
        ],
        "notes": "512 x 512 centre crops, DDIM 50, CFG 7.5.",
    },
}
