"""The local stack: an embedded AWS emulator (moto server), the real Terraform applied to it,
and a runtime standing in for the Lambda event source mapping, EventBridge and Fargate."""
