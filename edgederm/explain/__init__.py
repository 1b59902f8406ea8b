"""Model explanations: Grad-CAM per checkpoint member, overlay grids, lesion-mask localisation.

See ``gradcam.py``. The target layer of every architecture is declared in the model registry
(``ModelSpec.target_layer``), so every registered model is explainable without extra code.
"""

from __future__ import annotations

from .gradcam import (
    GradCAM,
    MemberCams,
    cam_in_mask_report,
    cam_mask_energy,
    cams_for_checkpoint,
    explain_run,
    overlay,
    save_cam_grid,
)

__all__ = [
    "GradCAM",
    "MemberCams",
    "cam_in_mask_report",
    "cam_mask_energy",
    "cams_for_checkpoint",
    "explain_run",
    "overlay",
    "save_cam_grid",
]
