"""`proctor audit archive` end to end: a real instance, export, moto's S3 on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed: pip install -e '.[test]'")

from proctor import Proctor  # noqa: E402
from proctor.bootstrap import init_home  # noqa: E402
from proctor.testing import make_plan  # noqa: E402

READ = ("travel.search", {"destination": "Lisbon", "date": "2027-01-01"})


@pytest.fixture
def env(tmp_path):
    out = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROCTOR_"))}
    out.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none2"),
    )
    return out


class TestArchiveCommand:
    def test_archive_uploads_sealed_segments_and_records_it(
        self, tmp_path, endpoint, env, proctor_exe
    ):
        """The CLI exports, archives sealed segments under Object Lock and logs the archive."""
        exe = proctor_exe
        home = tmp_path / "home"
        init_home(home)
        with Proctor.open(home) as p:
            for _ in range(4):
                p.submit(make_plan([READ]))
            p.checkpoint()
            n = p.gateway.store.event_count()
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="audit", ObjectLockEnabledForBucket=True)
        export = tmp_path / "export"
        run = subprocess.run(
            [
                exe,
                "audit",
                "export",
                str(export),
                "--home",
                str(home),
                "--segment-size",
                "5",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert run.returncode == 0, run.stderr

        run = subprocess.run(
            [
                exe,
                "audit",
                "archive",
                "--to",
                "s3://audit/prod",
                "--export",
                str(export),
                "--days",
                "30",
                "--endpoint-url",
                endpoint,
                "--home",
                str(home),
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        keys = [o["key"] for o in report["uploaded"]]
        assert len([k for k in keys if k.endswith(".jsonl")]) == n // 5
        assert any(k.endswith(".note") for k in keys)
        head = s3.head_object(Bucket="audit", Key=keys[0])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        with Proctor.open(home) as p:
            last = json.loads(p.events()[-1].body)
            assert last["type"] == "audit.archived"
            assert sorted(last["data"]["uploaded"]) == sorted(keys)
            assert p.verify().ok

    def test_bad_url(self, tmp_path, env, proctor_exe):
        """A URL that is not s3:// fails with exit 1 and a message naming it."""
        exe = proctor_exe
        home = tmp_path / "home"
        init_home(home)
        run = subprocess.run(
            [exe, "audit", "archive", "--to", "http://x/y", "--home", str(home)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert run.returncode == 1
        assert "s3://" in run.stderr
        assert Path(home).is_dir()
