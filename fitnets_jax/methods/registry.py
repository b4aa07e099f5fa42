"""The one list of distillation methods: each a `Method` record, found here by its name.

The built-in methods are the modules of this folder that define `METHOD = Method(...)`; a method of
your own joins them with `register(Method(...))` from any module (imported before its config is
loaded: a config file can import it), or is named on the command line as
`--config.method=package.module:ATTRIBUTE`. Everything that lists methods — `config.method`'s check, the
docs' test, the tests' parametrisations, `python -m fitnets_jax.tools.layers` — reads `names()` here.

Importing this module, or any method module, never imports JAX: loading a config reads every
method's defaults, and a mistake in it is reported before JAX starts. A method module therefore
imports the trainer's pieces (JAX, flax, `fitnets_jax.network`, …) inside its stage builders.
"""

import dataclasses
import importlib
import pkgutil
from typing import Callable, Optional

from fitnets_jax.errors import FitnetsError, named_attribute, one_of

TEACHERS = ("none", "one", "list")  # Method.teachers
NOT_METHODS = ("registry", "shared")  # modules of this folder that define no method


def _no_defaults():
  return {}


def _no_hint_pairs(config):
  return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  """Everything the rest of the library reads of a method; every hook but `name` and `stages` has a
  default that fits a one-student method.

  name: `config.method`'s value.
  stages: (shared.Context) -> [shared.Stage], in order; a teacher trained in the run gets its own
    stage first.
  teachers: "none"; "one" (`config.teacher`); or "list" (`config.teachers`, roles teacher1, …).
  networks: (config) -> [(role, config key, {model, dropout})] of the networks trained from scratch,
    the first being the summary's student; None: the one student of `config.student`.
  teacher_weights: (config, roles, validation_accuracy(role)) -> (μ, {role: accuracy or None}) for
    several teachers; None: uniform.
  defaults: () -> {config section: default}, merged into `config.base_config()`; a section belongs
    to one method (the sections several methods read are `shared.defaults()`).
  uses_hint_pairs: (config) -> whether its stages read the hint pairs (`config.hint`/`hints`), which
    `python -m fitnets_jax.tools.layers` then lists.
  extra_networks: (config, student Network, classes) -> {name: Network} trained beside the student
    (BYOT's exit heads), for the layers report.
  first_stages: the names of its stages that `stages.hint` configures (a first stage before the
    student's last: FSP's `fsp`, FT's `paraphraser`); FitNets' `hint…` stages always are.
  levels: (config, student Network, teacher Network) -> [(student Layer, teacher Layer)] of a method
    that reads several levels of both networks, pre-activation ones included (ReviewKD, OFD, AB), which
    `python -m fitnets_jax.tools.layers` then lists; None: none.
  """

  name: str
  stages: Callable
  teachers: str = "none"
  networks: Optional[Callable] = None
  teacher_weights: Optional[Callable] = None
  defaults: Callable = _no_defaults
  uses_hint_pairs: Callable = _no_hint_pairs
  extra_networks: Optional[Callable] = None
  first_stages: tuple = ()
  levels: Optional[Callable] = None

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name.isidentifier():
      raise FitnetsError(f"Method(name={self.name!r}): a method's name must be a Python identifier, e.g. 'my_kd'.")
    one_of(f"Method(name={self.name!r}).teachers", self.teachers, TEACHERS)

  @property
  def uses_teacher(self):
    return self.teachers != "none"


_BUILT_IN = {}  # name → Method of this folder's modules
_REGISTERED = {}  # name → Method registered from outside


def _built_in():
  if not _BUILT_IN:
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
      if info.name in NOT_METHODS:
        continue
      method = getattr(importlib.import_module(f"{package}.{info.name}"), "METHOD", None)
      if method is not None:
        assert method.name == info.name, f"{info.name}.py defines method {method.name!r}; name the module after it"
        _BUILT_IN[method.name] = method
  return _BUILT_IN


def register(method):
  """Adds `method` (a `Method`) to the methods `config.method` may name, and its config sections to
  `config.base_config()`. Registering a name again replaces the earlier record (a notebook cell run
  twice); a built-in method's name, or a config section another method owns, is refused. Returns
  `method`."""
  if not isinstance(method, Method):
    raise FitnetsError(f"register({method!r}): give a fitnets_jax.methods.Method record.")
  if method.name in _built_in():
    raise FitnetsError(
      f"register(Method(name={method.name!r})): {method.name!r} is a built-in method; choose another name."
    )
  others = {n: m for n, m in methods().items() if n != method.name}
  owners = {key: n for n, m in others.items() for key in m.defaults()}
  owners.update({key: "shared" for key in _shared_sections()})
  taken = sorted(key for key in method.defaults() if key in owners)
  if taken:
    raise FitnetsError(
      f"register(Method(name={method.name!r})): its config section(s) {', '.join(taken)} already belong to "
      f"{', '.join(sorted({owners[k] for k in taken}))}; name the method's sections after it, e.g. {method.name!r}."
    )
  _REGISTERED[method.name] = method
  return method


def methods():
  """{name: Method} of every method, built-in and registered, sorted by name."""
  return dict(sorted({**_built_in(), **_REGISTERED}.items()))


def names():
  """The names `config.method` accepts, sorted."""
  return tuple(methods())


def get(name):
  """The `Method` called `name`, or the one 'package.module:ATTRIBUTE' names (imported, and registered
  under its own name); unknown names raise FitnetsError listing the known ones."""
  if isinstance(name, str) and ":" in name:
    return imported(name)
  return methods()[one_of("method", name, names())]


def imported(name):
  """The `Method` record that `name` = 'package.module:ATTRIBUTE' names, registered if it is not yet: a
  method of your own chosen on the command line (`--config.method=mylab.distill:METHOD`)."""
  method = named_attribute(name, "method", "A method of your own is a Method record (docs/methods.md has an example).")
  if not isinstance(method, Method):
    raise FitnetsError(f"method={name!r} is a {type(method).__name__}, not a fitnets_jax.methods.Method record.")
  if methods().get(method.name) is not method:
    register(method)
  return method


def _shared_sections():
  from fitnets_jax.methods import shared

  return shared.defaults()


def config_defaults():
  """{config section: default} of the shared sections and of every method, each section owned once."""
  sections = dict(_shared_sections())
  for method in methods().values():
    for key, value in method.defaults().items():
      assert key not in sections, f"config section {key!r} is defined twice ({method.name!r})"
      sections[key] = value
  return sections
