"""The tools around the trainer, each a command (`python -m fitnets_jax.tools.NAME`) and a module:
`layers` (every capturable layer), `report` (report.md from finished runs), `plots`, `explore`
(inside a finished run), `benchmark` (speed and memory), `depth_sweep`, `export` (StableHLO or
SavedModel), `install` (the platform's JAX into the current environment)."""
