"""Several hosts for real: 2 processes on localhost joined by jax.distributed (gloo CPU collectives),
2 forced CPU devices each, sharing one workdir as the hosts of a pod slice share a bucket."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fitnets_jax import train

from conftest import ROOT, tiny_digits
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

  def __init__(self, workdir, *extra):
    port = free_port()
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
          os.path.join(ROOT, "configs", "digits.py"),
          "--workdir",
          str(workdir),
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
