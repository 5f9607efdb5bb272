"""The Q4 orchestrator Lambda (stdlib, boto3, Powertools); it shares q4_contract with the task."""
