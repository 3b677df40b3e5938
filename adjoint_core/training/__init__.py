"""Training: one trainer for every algorithm, the objectives, the SDE and the adjoint maths.

The trainer (one loop for every algorithm), the objectives (Adjoint Sampling, ASBS,
iDEM, bridge matching), the SDE simulation, the adjoint maths and data parallelism.
"""
