"""`earshot.serverless:handler` fed real S3 event notification payloads (AWS and MinIO shapes, keys URL-encoded as
S3 sends them) against the test S3 server, in a fresh interpreter as a Lambda container runs it: results and
error records land under $EARSHOT_OUTPUT/<key>, the model loads once per container, torch is never imported."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import esc50_clip
from corpus import list_results

from earshot.pipeline.notifications import created_objects

KEYS = {
    "uploads/dog bark+1.wav": esc50_clip("dog").read_bytes(),
    "uploads/été/ünïcode 深い.wav": esc50_clip("rooster").read_bytes(),
    "uploads/a%20literal percent.wav": esc50_clip("rain").read_bytes(),
    "uploads/broken.wav": b"RIFF\x00\x00\x00\x00WAVE",
}


def aws_event(bucket: str, keys: list[str]) -> dict:
    """An S3 `ObjectCreated:Put` notification as AWS delivers it to Lambda."""
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE123456789", "x-amz-id-2": "EXAMPLE/abc"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "earshot",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": urllib.parse.quote_plus(k, safe="/"), "size": 1024,
                          "eTag": "0123456789abcdef0123456789abcdef", "sequencer": "0A1B2C3D4E5F678901"}},
    } for k in keys]}


def minio_event(bucket: str, key: str) -> dict:
    """A MinIO bucket notification (webhook target shape): top-level EventName and Key, one record whose key is
    escaped as Go's url.QueryEscape does (`/` as %2F, space as +)."""
    return {"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-01-01T00:00:00.000Z",
        "eventName": "s3:ObjectCreated:Put", "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                             "x-amz-request-id": "17A0B2C3D4E5F6A7", "x-minio-deployment-id": "0a1b2c3d",
                             "x-minio-origin-endpoint": "http://127.0.0.1:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": urllib.parse.quote_plus(key, safe=""), "size": 1024,
                          "eTag": "d41d8cd98f00b204e9800998ecf8427e", "contentType": "audio/wav",
                          "userMetadata": {"content-type": "audio/wav"}, "sequencer": "17A0B2C3D4E5F6A8"}},
        "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"},
    }]}


RUN = """
import json, sys
from earshot import serverless
out = [serverless.handler(json.loads(line), None) for line in open(sys.argv[1])]
out.append({"torch": "torch" in sys.modules, "same": serverless.runtime() is serverless.runtime()})
print(json.dumps(out))
"""


def run_handler(tmp_path: Path, events: list[dict], env: dict[str, str]) -> list[dict]:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    r = subprocess.run([sys.executable, "-c", RUN, str(path)], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shape", ["aws", "minio"])
def test_handler_classifies_event_objects(tmp_path, s3, shape, monkeypatch):
    import os

    c = s3.client()
    for key, data in KEYS.items():
        c.put_object(Bucket="earshot", Key=key, Body=data)
    keys = list(KEYS)
    if shape == "aws":
        events = [aws_event("earshot", keys[:2]), aws_event("earshot", keys[2:])]
    else:
        events = [minio_event("earshot", k) for k in keys]
    # A result under the output prefix (a trigger on the whole bucket sees it) and an object deleted in between.
    events.append(aws_event("earshot", ["results/uploads/dog bark+1.wav.json", "uploads/gone.wav"]))
    env = {**os.environ, "EARSHOT_OUTPUT": "s3://earshot/results/", "EARSHOT_MODEL": "mn04-as"}
    *outs, proc = run_handler(tmp_path, events, env)
    assert proc == {"torch": False, "same": True}
    assert [o["cold_start"] for o in outs] == [True] + [False] * (len(outs) - 1)
    rows = [r for o in outs for r in o["results"]]
    assert [r["key"] for r in rows] == keys + ["results/uploads/dog bark+1.wav.json", "uploads/gone.wav"]
    states = {r["key"]: r["state"] for r in rows}
    assert [states[k] for k in keys] == ["done", "done", "done", "failed"]
    assert states["uploads/gone.wav"] == "skipped" and states["results/uploads/dog bark+1.wav.json"] == "skipped"

    listed = [o["Key"] for o in c.list_objects_v2(Bucket="earshot", Prefix="results/")["Contents"]]
    results = list_results([k[len("results/"):] for k in listed])
    assert set(results) == set(keys) and all(len(v) == 1 for v in results.values())
    for key in keys:
        doc = json.loads(c.get_object(Bucket="earshot", Key="results/" + results[key][0])["Body"].read())
        assert doc["title"] == key
        if key.endswith("broken.wav"):
            assert results[key] == [key + ".error.json"] and doc["labels"] == []
            assert doc["error"]["type"] == "AudioError" and doc["attempts"] == 1
        else:
            assert results[key] == [key + ".json"] and doc["error"] is None and doc["model"] == "mn04-as"
    dog = json.loads(c.get_object(Bucket="earshot", Key="results/uploads/dog bark+1.wav.json")["Body"].read())
    assert {"Dog", "Bark", "Animal"} & set(dog["labels"])


def test_handler_needs_an_output(tmp_path, s3):
    import os

    env = {k: v for k, v in os.environ.items() if k != "EARSHOT_OUTPUT"}
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(aws_event("earshot", ["x.wav"])) + "\n")
    r = subprocess.run([sys.executable, "-c", RUN, str(path)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0 and "EARSHOT_OUTPUT" in r.stderr


def test_event_shapes_name_the_same_objects():
    """AWS, MinIO, SQS- and SNS-wrapped and EventBridge deliveries of one upload all name the decoded key."""
    key = "in/a b+c/ü%.wav"
    aws = aws_event("bk", [key])
    sqs = {"Records": [{"eventSource": "aws:sqs", "body": json.dumps(aws)}]}
    sns = {"Records": [{"EventSource": "aws:sns", "Sns": {"Message": json.dumps(aws)}}]}
    bridge = {"source": "aws.s3", "detail-type": "Object Created",
              "detail": {"bucket": {"name": "bk"}, "object": {"key": key, "size": 3, "etag": "e"}}}
    removed = {"Records": [{**aws["Records"][0], "eventName": "ObjectRemoved:Delete"}]}
    for body in (aws, minio_event("bk", key), sqs, sns, bridge):
        assert [(o.bucket, o.key) for o in created_objects(body)] == [("bk", key)], body
    assert list(created_objects(removed)) == [] and list(created_objects({"Event": "s3:TestEvent"})) == []
