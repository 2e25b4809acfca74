"""SNS and SQS for tests/notifications.rs, run with the tools venv's Python (boto3).

The test needs these two services only to set up a topic with a subscribed queue and to read what
the queue received; the code under test never calls them. boto3 is already in the tools venv (moto
and the SAM translator need it), whereas aws-sdk-sns and aws-sdk-sqs as dev-dependencies would add
two SDK crates to every test build on a 2-core machine.

  sns_sqs.py subscribe ENDPOINT NAME   create topic NAME and queue NAME, subscribe the queue;
                                       prints {"topic_arn", "queue_url"}
  sns_sqs.py receive ENDPOINT QUEUE    receive (and delete) what the queue holds now; prints a
                                       JSON list of the notifications (the SNS envelopes' Message,
                                       parsed)
"""
import json
import sys

import boto3


def client(service, endpoint):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def subscribe(endpoint, name):
    sns, sqs = client("sns", endpoint), client("sqs", endpoint)
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    print(json.dumps({"topic_arn": topic_arn, "queue_url": queue_url}))


def receive(endpoint, queue_url):
    sqs = client("sqs", endpoint)
    # No long poll: the caller polls (the test's `eventually`), and asks "nothing yet?" too.
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    notifications = []
    for message in messages:
        envelope = json.loads(message["Body"])
        notifications.append({"subject": envelope.get("Subject"), "message": json.loads(envelope["Message"])})
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    print(json.dumps(notifications))


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "subscribe":
        subscribe(sys.argv[2], sys.argv[3])
    elif command == "receive":
        receive(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {command}")
