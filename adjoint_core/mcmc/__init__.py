"""Markov chain Monte Carlo baselines (MALA, HMC, parallel tempering) and their config runs."""
