import boto3


def test_moto_server_answers_real_boto3_over_http(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="q4-smoke")
    s3.put_object(Bucket="q4-smoke", Key="run=a/input/x.csv", Body=b"a,b\n1,2\n")
    assert s3.get_object(Bucket="q4-smoke", Key="run=a/input/x.csv")["Body"].read() == b"a,b\n1,2\n"
    assert aws_env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
