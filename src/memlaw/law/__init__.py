"""The Parametric Memory Law ΔL(r, ℓ) = C · r^α · ℓ^(−β) + b: robust fit, bootstrap CIs, rank planning."""
