import json
import time

import boto3


def test_moto_server_answers_real_boto3_over_http(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="q4-smoke")
    s3.put_object(Bucket="q4-smoke", Key="run=a/input/x.csv", Body=b"a,b\n1,2\n")
    assert s3.get_object(Bucket="q4-smoke", Key="run=a/input/x.csv")["Body"].read() == b"a,b\n1,2\n"
    assert aws_env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


def test_redrive_policy_reads_back_as_compact_json_like_sqs(aws_env):
    # q4_local.moto_launcher.compact_redrive_policy: SQS returns the RedrivePolicy compact, target first and
    # the count a number; moto 5.2.5 added spaces, which the AWS provider planned as a change on every run.
    sqs = boto3.client("sqs")
    suffix = time.monotonic_ns()
    dlq_url = sqs.create_queue(QueueName=f"compact-dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sent = json.dumps({"maxReceiveCount": "5", "deadLetterTargetArn": dlq_arn}, indent=2)
    url = sqs.create_queue(QueueName=f"compact-{suffix}", Attributes={"RedrivePolicy": sent})["QueueUrl"]
    expected = f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":5}}'
    for names in (["RedrivePolicy"], ["All"]):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        assert attributes["RedrivePolicy"] == expected
    # Setting another attribute keeps it, and the queue without one still omits it.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "40"})
    assert (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]["RedrivePolicy"]
        == expected
    )
    assert (
        "RedrivePolicy"
        not in sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    )
