"""What every command of the package shares on the command line: `--help`, and one-paragraph errors.

`start(main, doc)` is absl's `app.run` for these commands: `-h`/`--help` prints the command's docstring
and every flag it defines (`--config` and `--config.KEY=VALUE` included) and exits 0; a stray
positional argument, or a missing required flag such as `--config`, is one `error:` paragraph with
exit 2 (`fitnets_jax.errors`), raised before anything is loaded.
"""

import sys

HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "--helpfull", "-?")


def _flag_lines(program):
  from absl import flags

  lines = []
  for module, defined in sorted(flags.FLAGS.flags_by_module_dict().items()):
    if not (module.startswith("fitnets_jax") or module in ("__main__", program)):
      continue
    for flag in sorted(defined, key=lambda f: f.name):
      default = "" if flag.default in (None, "", [], False) else f" (default: {flag.default})"
      lines.append(f"  --{flag.name}: {flag.help}{default}")
      if flag.name == "config":
        lines.append(
          "  --config.KEY=VALUE: override any key of the config (docs/configuration.md); repeat for several keys"
        )
  return lines


def usage(doc, program):
  return "\n".join([doc.strip(), "", "Flags:", *_flag_lines(program)])


def start(main, doc, required=()):
  """`main(argv)` under absl with the package's conventions (the module docstring says which);
  `required` names the flags that must be given."""
  from absl import app, flags

  from fitnets_jax.errors import FitnetsError, or_exit

  program = sys.argv[0]
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    print(usage(doc, program))
    sys.exit(0)

  def checked(argv):
    def check():
      if len(argv) > 1:
        raise FitnetsError(
          f"unexpected argument(s) {' '.join(argv[1:])!r}: this command takes flags only (--name=value); "
          "--help lists them."
        )
      missing = [f"--{name}" for name in required if flags.FLAGS[name].value in (None, "")]
      if missing:
        raise FitnetsError(
          f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
          f"{', e.g. --config configs/digits.py (the quick start)' if '--config' in missing else ''}; "
          "--help lists every flag."
        )

    or_exit(check)
    return main(argv)

  app.run(checked)
