"""`make redrive`: move the dead-letter queue's messages back to the audience-changes queue.

python -m devtools.redrive                                  the local stack (`make serve`, moto on :4566)
python -m devtools.redrive --endpoint URL --dlq-url U --queue-url U [--method auto|move-task|manual]

`move-task` is SQS StartMessageMoveTask, what `segment-criteo dlq --redrive` does on AWS; `auto` falls back
to `manual` where the endpoint lacks it (moto): see segment_criteo/dlq.py.
"""

from __future__ import annotations

import argparse
from typing import Any

import boto3
from botocore.config import Config

from devtools.local_aws import REGION
from segment_criteo.dlq import redrive

LOCAL_ENDPOINT = "http://127.0.0.1:4566"
LOCAL_QUEUE = f"{LOCAL_ENDPOINT}/123456789012/local-audience-changes"
LOCAL_DLQ = f"{LOCAL_QUEUE}-dlq"


def sqs_client(endpoint: str | None) -> Any:
    """An SQS client (one attempt per call: an unimplemented API must not be retried 5 times)."""
    config = Config(retries={"max_attempts": 1, "mode": "standard"})
    if not endpoint:
        return boto3.client("sqs", config=config)
    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        config=config,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options, redrive, print what happened."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default=LOCAL_ENDPOINT, help="SQS endpoint ('' = AWS)")
    parser.add_argument("--dlq-url", default=LOCAL_DLQ)
    parser.add_argument("--queue-url", default=LOCAL_QUEUE)
    parser.add_argument("--method", choices=("auto", "move-task", "manual"), default="auto")
    args = parser.parse_args(argv)
    result = redrive(sqs_client(args.endpoint or None), args.dlq_url, args.queue_url, args.method)
    if result.method == "move-task":
        print(f"StartMessageMoveTask started: {result.task_handle} (aws sqs list-message-move-tasks shows progress)")
    else:
        print(f"moved {result.moved} message(s) from the DLQ back to {args.queue_url}")
        for reason, count in result.reasons.most_common():
            print(f"  {count} x {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
