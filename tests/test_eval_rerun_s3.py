"""No stale answers: a candidate model replaced on s3:// (a local moto server) under the same path is
answered again on the rerun, by the new weights, never from the cache or a stale local download."""
import json
import os
import subprocess
import sys

from tests.conftest import build_sorry_llama, build_tiny_llama
from tests.s3_fixtures import moto_s3, s3_env  # noqa: F401 (moto_s3 is a fixture)


def upload(folder: str, bucket: str, prefix: str) -> None:
    import boto3

    client = boto3.client("s3")
    for name in sorted(os.listdir(folder)):
        client.upload_file(os.path.join(folder, name), bucket, f"{prefix}/{name}")


def three_runs(first: str, second: str, bucket: str, out: str) -> None:
    """In a process of its own (Ray's workers get the moto endpoint from its environment): evaluate the
    model at s3://bucket/models/cand, replace its files with `second`, evaluate again, and once more."""
    import pyarrow.parquet as pq

    from common.config import load_config
    from eval.config import EvaluateConfig
    from eval.pipeline import run_evaluate

    cfg = load_config(EvaluateConfig, "configs/evaluate_tiny.yaml", [
        "testset.limit=1", f"candidate.model=s3://{bucket}/models/cand",
        "answer_sampling.max_tokens=6", f"output.path={out}", "report.bootstrap_samples=10"])
    results = []
    for model in (first, second, None):
        if model:
            upload(model, bucket, "models/cand")
        summary = run_evaluate(cfg)
        items = pq.read_table(os.path.join(out, "items.parquet")).to_pylist()
        results.append({"answers": summary["answers"]["candidate"], "verdicts": summary["verdicts"],
                        "texts": [row["candidate_answer"] for row in items], "engine": summary["models"]["candidate"]})
    print("RESULTS " + json.dumps(results))


def test_a_model_replaced_on_s3_is_answered_again_never_from_the_cache(moto_s3, tmp_path):  # noqa: F811
    first = build_tiny_llama(str(tmp_path / "first"), seed=0)
    second = build_sorry_llama(str(tmp_path / "second"))  # says " sorry" to everything
    env = os.environ | s3_env() | {"EVOLRAY_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}
    code = (f"from tests.test_eval_rerun_s3 import three_runs; "
            f"three_runs({first!r}, {second!r}, {moto_s3.bucket!r}, {str(tmp_path / 'eval')!r})")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    first_run, replaced, again = json.loads(done.stdout.split("RESULTS ", 1)[1].splitlines()[0])
    assert first_run["answers"] == {"reused": 0, "generated": 1, "failed": 0}
    assert replaced["answers"] == {"reused": 0, "generated": 1, "failed": 0}  # new files: answered again
    assert all("sorry" in text for text in replaced["texts"])  # the new weights, not a stale download
    assert not any("sorry" in text for text in first_run["texts"])
    assert replaced["verdicts"]["generated"] == 2  # a new answer: judged again, in both orders
    assert again["answers"] == {"reused": 1, "generated": 0, "failed": 0} and again["texts"] == replaced["texts"]
    assert (again["verdicts"]["reused"], again["verdicts"]["generated"]) == (2, 0)  # the echo judge: unreadable
    assert (first_run["engine"]["device"], first_run["engine"]["dtype"]) == ("cpu", "float32")  # in the key
