"""Training: the trainer (one loop for every algorithm), the objectives (Adjoint Sampling, ASBS,
iDEM, bridge matching), the SDE simulation, the adjoint maths and data parallelism.
"""
