"""`fitnets`: hints, then KD (Romero et al. 2015, Algorithm 1).

Stage `hint`: the student up to and including the guided layer, plus a convolutional regressor,
minimise ½(u_h(x) − r(v_g(x)))² against the teacher's hint layer (eq. 3), reduced as the authors'
`HintCost` does by default (`hint.reduction`, `losses.hint_loss`). The regressor is initialised
U(±0.05), has max-norm 0.9 and no learning-rate scale, as the authors' `generateConvRegressor`.
Everything after the guided layer — parameters and batch statistics — is frozen bit for bit, and is
not computed: only the two networks' prefixes are captured, and XLA drops the unused rest.
Several hint pairs (`config.hints`, see `fitnets_jax.hints`) train progressively — stage
`hint1` up to guided layer 1, then `hint2` up to guided layer 2, … — or jointly in one `hint`
stage on the weighted sum, up to the deepest guided layer. A pair may be of kind `attention`.
Stage `kd`: the regressors are dropped and the whole student trains on the KD loss from the
hint stages' weights. Both stages live in `fitnets_jax.methods.shared` (multi_teacher runs them too).
"""

from fitnets_jax.methods import shared
from fitnets_jax.methods.registry import Method

METHOD = Method(
  name="fitnets",
  stages=lambda ctx: shared.hint_stages(ctx) + [shared.kd_stage(ctx)],
  teachers="one",
  uses_hint_pairs=lambda config: True,
)
