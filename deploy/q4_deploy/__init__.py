"""What deploying the pipeline needs besides Terraform itself: the orchestrator Lambda zip and the
Terraform runner (provider mirror discovery, module copies, emulator overrides)."""
