"""One module per model family: which engine forward functions each phase of ``analyze()`` runs,
traced shape-only (``pyworkloads.kernels.trace``), and the family's summary figures and tensor
parallel plan.  The layer list itself always comes from the engine."""
