"""Several hosts for real: 2 processes on localhost joined by jax.distributed (gloo CPU collectives),
2 forced CPU devices each, sharing one workdir as the hosts of a pod slice share a bucket."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fitnets_jax import train

from conftest import ROOT, tiny_digits, with_overrides
from helpers import assert_same_numbers, assert_same_run, read_metrics

STEPS = dict(teacher=12, hint=4, student=8)
FLAGS = [
  "--config.batch_size=32",
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=4",
  "--config.keep_checkpoints=100",
  "--config.dataset.flip=True",
  *(f"--config.stages.{stage}.steps={n}" for stage, n in STEPS.items()),
]


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Cluster:
  """One launch of the command line as processes 0 and 1 of a 2-host cluster."""

  def __init__(self, workdir, *extra, host_workdirs=None, config="digits.py"):
    port = free_port()
    workdirs = host_workdirs or [workdir, workdir]
    env = dict(
      os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1"
    )
    self.procs = [
      subprocess.Popen(
        [
          sys.executable,
          "-m",
          "fitnets_jax.main",
          "--config",
          os.path.join(ROOT, "configs", config),
          "--workdir",
          str(workdirs[i]),
          "--config.distributed=True",
          f"--config.cluster.coordinator_address=127.0.0.1:{port}",
          "--config.cluster.num_processes=2",
          f"--config.cluster.process_id={i}",
          *FLAGS,
          *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
      for i in range(2)
    ]

  def wait(self, timeout=400):
    results = [p.communicate(timeout=timeout) for p in self.procs]
    return [p.returncode for p in self.procs], [out + err for out, err in results]

  def signal_when(self, condition, signum, processes=(0, 1), timeout=300):
    deadline = time.time() + timeout
    while not condition():
      assert time.time() < deadline and all(p.poll() is None for p in self.procs), "the run ended before the signal"
      time.sleep(0.05)
    for i in processes:
      self.procs[i].send_signal(signum)


def checkpoint_at_least(workdir, step):
  folder = os.path.join(workdir, "checkpoints")
  return lambda: os.path.isdir(folder) and any(d.isdigit() and int(d) >= step for d in os.listdir(folder))


@pytest.mark.first
def test_two_hosts_match_one_host_and_resume_after_sigterm_and_sigkill(tmp_path):
  """1 host × 4 devices against 2 hosts × 2 devices (through --seeds, which must join the cluster before
  it looks at devices), then a 2-host run that holds its workdir against a second start, stopped by
  SIGTERM on both hosts (both exit 75 at the same step) and by SIGKILL of one host mid-stage, each time
  restarted on both: bit for bit the uninterrupted 2-host run."""
  one_host = tmp_path / "one_host"
  train.run(
    tiny_digits(
      **STEPS,
      num_devices=4,
      log_every_steps=1,
      checkpoint_every_steps=4,
      keep_checkpoints=100,
      **{"dataset.flip": True},
    ),
    str(one_host),
  )

  two_hosts = tmp_path / "two_hosts"
  codes, logs = Cluster(two_hosts, "--seeds=1").wait()
  assert codes == [0, 0], logs
  assert "in 2 process(es), 2 here" in logs[0]
  assert "A host that dies or hangs is waited for 100 s (cluster.heartbeat_timeout_s)" in logs[0]
  # Same data order and global batch-norm statistics: equal to float32 reassociation (see helpers).
  assert_same_numbers(read_metrics(str(one_host)), read_metrics(str(two_hosts / "seed_0")))

  stopped = tmp_path / "stopped"
  run = Cluster(stopped)
  run.signal_when(checkpoint_at_least(stopped, 4), signal.SIGSTOP)  # paused while a second start tries the workdir
  intruder = subprocess.run(
    [
      sys.executable,
      "-m",
      "fitnets_jax.main",
      "--config",
      os.path.join(ROOT, "configs", "digits.py"),
      "--workdir",
      str(stopped),
      *FLAGS,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"),
  )
  for p in run.procs:
    p.send_signal(signal.SIGCONT)
  assert intruder.returncode == 2, intruder.stderr[-3000:]
  assert f"is in use by another run: process {run.procs[0].pid} on host" in intruder.stderr  # process 0 holds it
  for p in run.procs:
    p.send_signal(signal.SIGTERM)
  codes, logs = run.wait()
  assert codes == [75, 75], logs
  stops = [[line for line in log.splitlines() if line.startswith("preempted:")] for log in logs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops  # the same stage and step on both hosts

  saved = max(int(d) for d in os.listdir(stopped / "checkpoints") if d.isdigit())
  run = Cluster(stopped)  # resumes; host 1 is killed mid-stage, then host 0 (as a scheduler restarts a job)
  run.signal_when(checkpoint_at_least(stopped, saved + 1), signal.SIGKILL, processes=(1,))
  time.sleep(0.5)
  run.procs[0].kill()
  run.wait()
  codes, logs = Cluster(stopped).wait()
  assert codes == [0, 0], logs
  assert "Resuming from" in logs[0]
  assert_same_run(str(stopped), str(two_hosts / "seed_0"))


def test_hosts_that_see_different_workdirs_refuse_with_both_views_instead_of_hanging(tmp_path):
  """Per-host folders by mistake (or a stale NFS cache): process 0's workdir holds a run's checkpoints,
  process 1's is empty. Both exit 2 at once with one paragraph naming both views; nothing is restored.
  A refusal on one host alone (process 0's config.json is another experiment's) stops both hosts too."""
  shared = tmp_path / "host0"
  train.run(tiny_digits(**STEPS, num_devices=4, checkpoint_every_steps=4, keep_checkpoints=100), str(shared))
  os.remove(shared / "summary.json")
  codes, logs = Cluster(shared, host_workdirs=[shared, tmp_path / "host1"]).wait(timeout=300)
  assert codes == [2, 2], logs  # the runs differ in dataset.flip: only process 0 can see it
  assert "holds another experiment: its config.json differs in dataset.flip" in logs[0]
  assert "process 0 refused the run as bad input" in logs[1] and "Traceback" not in logs[1], logs[1][-3000:]
  config = json.load(open(shared / "config.json"))
  config["dataset"]["flip"] = True  # the same experiment now: the hosts' views are compared
  json.dump(config, open(shared / "config.json", "w"))
  newest = max(int(d) for d in os.listdir(shared / "checkpoints") if d.isdigit())
  before = sorted(os.listdir(shared / "checkpoints"))
  started = time.time()
  codes, logs = Cluster(shared, host_workdirs=[shared, tmp_path / "host1"]).wait(timeout=300)
  assert codes == [2, 2], logs
  for log in logs:
    assert (
      f"process 0 sees newest checkpoint at global step {newest}, {len(before) - 1} checkpoint(s)" in log
      or f"process 0 sees newest checkpoint at global step {newest}" in log
    ), log[-3000:]
    assert "process 1 sees newest checkpoint none, 0 checkpoint(s), config.json missing" in log, log[-3000:]
    assert "Traceback" not in log
  assert time.time() - started < 200  # at once, not after a collective's timeout
  assert sorted(os.listdir(shared / "checkpoints")) == before


def test_crd_memory_banks_on_two_hosts_match_one_host(tmp_path):
  """CRD's memory banks (part of the train state, whole on every device) on 2 hosts × 2 devices: the same
  losses as 1 host × 4 devices, and the same banks and Z at the end, to float32 reassociation (see
  helpers: the embeddings the banks take in differ by reassociated sums only). The teacher was saved by
  this one process and is read by both hosts (orbax restores it into each host's own device)."""
  import jax
  import numpy as np

  from fitnets_jax import experiment, saved

  from conftest import load_config
  from helpers import final_state

  config = load_config("crd_digits")
  teacher = experiment.build_network("teacher", config.teacher, 10, (8, 8, 1))
  params, stats = teacher.init(jax.random.PRNGKey(3))
  saved.save_network(str(tmp_path), "teacher", {"params": params, "batch_stats": stats}, teacher.describe())
  flags = ["--config.batch_size=32", "--config.log_every_steps=1", "--config.stages.student.steps=6"]
  flags.append(f"--config.teacher.checkpoint={tmp_path}")
  one_host = tmp_path / "one_host"
  overrides = {"num_devices": 4, "batch_size": 32, "log_every_steps": 1, "stages.student.steps": 6}
  overrides["dataset.flip"] = True  # as FLAGS, which every Cluster launch passes
  train.run(with_overrides(config, {**overrides, "teacher.checkpoint": str(tmp_path)}), str(one_host))
  two_hosts = tmp_path / "two_hosts"
  codes, logs = Cluster(two_hosts, *flags, config="crd_digits.py").wait()
  assert codes == [0, 0], logs
  assert_same_numbers(read_metrics(str(one_host)), read_metrics(str(two_hosts)))
  (_, one), (_, two) = final_state(str(one_host)), final_state(str(two_hosts))
  memory = lambda state: state["batch_stats"]["distiller"]
  for key in ("student", "teacher", "z"):
    np.testing.assert_allclose(memory(two)[key], memory(one)[key], rtol=1e-3, atol=1e-5)
  assert (memory(one)["z"] > 0).all()
