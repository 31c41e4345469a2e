"""Zeroth-order safety-robustness refinement (spec §2.2, §3.3): MeZO steps, threat-model perturbations,
layer sensitivity, the refinement loop, the robustness sweep and the `zo-refine` central job."""
