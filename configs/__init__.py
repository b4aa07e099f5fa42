"""The shipped experiment configs; installed as `fitnets_jax.configs`, so `--config configs/NAME.py`
finds them from any folder."""
