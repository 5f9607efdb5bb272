"""The Q4 orchestrator Lambda and the job contract it shares with the task (stdlib + Powertools only)."""
